"""Settings shared by the unit tests and by nbval over chapters/*.ipynb.

nbval starts each notebook's kernel with this process's environment
(``--nbval-current-env``), so the variables below reach the notebooks too:
quick-mode sizes, and no progress bars (tqdm writes to stderr, which nbval
would compare against the stored outputs).
"""

import os

os.environ["DLT_SCALE"] = "quick"
os.environ["TQDM_DISABLE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")
