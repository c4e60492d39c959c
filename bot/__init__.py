"""papers-bot: new machine-learning papers in team chat."""

import os

# numpy (scikit-learn's, for the recommender; sqlite-utils imports it whenever it is installed)
# starts OpenBLAS worker threads when imported: before bot.cli's _Signals blocks SIGINT and
# SIGTERM in every thread, so such a thread would take SIGTERM's default action and kill the
# bot instead of stopping it cleanly. The recommender's work is sparse, not BLAS: one thread.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

__version__ = "0.1.0"
