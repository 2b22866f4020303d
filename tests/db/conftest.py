from tests.fixtures_platform import (  # noqa: F401  (fixtures are found by name)
    backend,
    database_url,
    db,
    empty_database_url,
    pg,
    postgres_server,
    sqlite_template,
)
