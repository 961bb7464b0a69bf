"""A xenstore server for tests (the real wire protocol); never shipped."""

TEST_DOMID = 7
