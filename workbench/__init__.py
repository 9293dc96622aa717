"""workbench: SQL-first data preparation and fine-tuning, every step a table you can query.

    workbench run            # the whole pipeline on the bundled sample data
    python -c "import workbench; print(workbench.connect().sql('show tables'))"
"""
from .workspace import (  # noqa: F401
    WorkspaceError,
    connect,
    home,
    run_sql_file,
    snapshot_id,
    sqlalchemy_engine,
    table_exists,
    transaction,
    workspace_root,
    write_table,
)

__version__ = "0.1.0"
