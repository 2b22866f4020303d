"""``vr3ai secrets rotate``: re-encrypt every stored secret under the current secret key.

Which columns hold secrets is read from the model, not listed here: every column whose name ends in
``_enc`` is Fernet ciphertext (the naming rule of ``vr3ai.db.models``), so a secret column added
later is rotated without anyone remembering this file. Everything happens in one transaction: a
value that no configured key opens stops the rotation before anything is written, and the error
names the row, never the value.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Column, Table, select, update

from vr3ai.core.secrets import SecretBox
from vr3ai.db.models import Base
from vr3ai.db.session import Database

ENCRYPTED_SUFFIX = "_enc"


@dataclass
class RotationResult:
    rotated: int = 0
    already_current: int = 0


def encrypted_columns() -> list[tuple[Table, Column[str]]]:
    out = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if column.name.endswith(ENCRYPTED_SUFFIX):
                out.append((table, column))
    return out


async def rotate_all(db: Database, box: SecretBox) -> RotationResult:
    result = RotationResult()
    async with db.session() as s, s.begin():
        for table, column in encrypted_columns():
            pk = next(iter(table.primary_key.columns))
            rows = (await s.execute(select(pk, column).where(column.is_not(None)))).all()
            for row_id, token in rows:
                if box.is_current(token):
                    result.already_current += 1
                    continue
                try:
                    fresh = box.rotate(token)
                except ValueError as e:
                    raise ValueError(f"{table.name}.{column.name} of row {row_id}: {e}") from None
                await s.execute(update(table).where(pk == row_id, column == token).values({column.name: fresh}))
                result.rotated += 1
    return result


async def all_current(db: Database, box: SecretBox) -> bool:
    """Whether every stored secret opens with the current key alone (safe to forget the others)."""
    async with db.session() as s:
        for _table, column in encrypted_columns():
            for token in (await s.scalars(select(column).where(column.is_not(None)))).all():
                if not box.is_current(token):
                    return False
    return True
