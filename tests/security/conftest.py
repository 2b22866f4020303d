from tests.fixtures_platform import (  # noqa: F401  (fixtures are found by name)
    app,
    backend,
    database_url,
    db,
    fake_telephony,
    pg,
    platform,
    platform_tel,
    postgres_app,
    postgres_server,
    sqlite_app,
    sqlite_template,
)
