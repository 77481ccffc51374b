"""Internal column names of the evaluation frame; prefixed so a table's extra columns never clash.

The address (IP), judged time (T) and true owner (OWNER) live in truth.py, beside the lookup.
"""

from __future__ import annotations

DIR = "_ev_dir"  # direction
LOCAL = "_ev_local"  # local_workload
PRED = "_ev_pred"  # remote_workload: the attribution being judged
SRC = "_ev_src"  # remote_source
REGION = "_ev_region"  # region, when the table has it
