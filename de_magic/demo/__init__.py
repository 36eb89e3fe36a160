"""Demo backends started by ``de-magic demo``: small, typed, and runnable locally."""
