"""Opening an Optuna RDB storage (--storage postgresql://..., sqlite:///...): with the driver the
URL needs (storage_urls.rdb_url), and safely when many machines open a fresh database at once."""

from __future__ import annotations

import random
import time
from typing import Any

from nnlab.storage_urls import rdb_url

# How often opening is tried while other machines are creating the same tables.
ATTEMPTS = 5


def open_rdb(url: str, **options: Any) -> Any:
    """The Optuna storage at `url` (cached, as optuna.storages.get_storage gives it); `options`
    go to optuna.storages.RDBStorage (heartbeat_interval, ...).

    Optuna creates its tables on first use, unguarded: machines starting a sweep on an empty
    database at the same moment collide (a duplicate table or version row; Optuna issue #1092)
    and all but one fail. The loser tries again: by then the tables exist and are left alone."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    opened = rdb_url(url)  # UserError, never the password, for a missing driver
    for attempt in range(1, ATTEMPTS):
        try:
            return optuna.storages.get_storage(optuna.storages.RDBStorage(opened, **options))
        except (IntegrityError, ProgrammingError, OperationalError) as err:
            # SQLite says "table ... already exists" as an OperationalError, which is also how
            # a wrong password or a server that is down reads: those are answered at once.
            if isinstance(err, OperationalError) and "already exists" not in str(err):
                raise
            time.sleep(random.uniform(0.1, 0.3) * attempt)  # let the winner commit
    # The last try: an error now is no race but the database's answer, for the caller to report.
    return optuna.storages.get_storage(optuna.storages.RDBStorage(opened, **options))
