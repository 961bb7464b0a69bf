"""Two recoverers claiming one instance at the same moment: exactly one gets it.

On the real store engines: SQLite and PostgreSQL (through psycopg 3, the `postgresql`
extra's driver, whose INSERT rowcount is -1: the claim must not read it).
"""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.pg import pg_url  # noqa: F401  (fixture)
from virt.recovery.journal import Claim, ClaimRefused, RecoveryJournal
from virt.store import Store

ROUNDS = 40


def _race(url: str) -> None:
    with Store(url) as store:
        journals = [RecoveryJournal(store, host=h) for h in ("host-b", "host-c")]
        for _ in range(ROUNDS):
            instance = str(uuid.uuid4())
            results: list[Claim | ClaimRefused] = []
            start = threading.Barrier(len(journals))

            def claim(journal: RecoveryJournal, instance: str = instance,
                      start: threading.Barrier = start,
                      results: list[Claim | ClaimRefused] = results) -> None:
                start.wait()
                results.append(journal.claim(instance, "host-a"))

            threads = [threading.Thread(target=claim, args=(j,)) for j in journals]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            won = [r for r in results if isinstance(r, Claim)]
            assert len(results) == 2 and len(won) == 1, results


def test_one_claim_wins_on_sqlite(tmp_path):
    _race(f"sqlite:///{tmp_path / 'store.sqlite'}")


@pytest.mark.slow
def test_one_claim_wins_on_postgresql(pg_url):  # noqa: F811
    _race(pg_url)
