"""Clinical outcome definitions shared by the generator and the cleaner (the bottom floor: imports nothing).

The synthetic generator plants its truth with these and harmonisation labels every cohort with them, so a
cleaning edit does not touch the generator (nor rerun it under DVC), and the two cannot drift apart.
For MADRS the clean stage reads its rules from the scale registry (configs/scale_conversions.yaml);
tests/test_scales.py checks that the registry agrees with the constants here.
"""

from __future__ import annotations

RESPONSE_FRACTION = 0.5  # response = score <= this fraction of baseline (a drop >= 50 %)
REMISSION_MAX_MADRS = 10.0  # remission = MADRS <= 10

# First-session hypertensive event (docs/literature.md §12): SBP rise >= 40 mmHg (the esketamine label's threshold)
# or a peak at or above 180 systolic / 110 diastolic (severe hypertension in the Yale review). Anxiety response:
# GAD-7 drop >= 50 % (RESPONSE_FRACTION, as Hull 2022, docs/literature.md §11).
BP_EVENT_SBP_RISE = 40.0
BP_EVENT_SBP_PEAK = 180.0
BP_EVENT_DBP_PEAK = 110.0
