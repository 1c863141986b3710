"""What the tool hands to people: CSV/JSON tables, album folders, XMP sidecars and the static gallery report.

Each module is a set of pure functions over a :class:`~pmllm_batch.db.Store` and plain arguments; the CLI
(``pmllm_batch.cli.commands``) and the daemon only adapt options and print. Layer rule: this package reads the
database (:mod:`pmllm_batch.db`), decodes photos for thumbnails (:mod:`pmllm_batch.scan`) and uses the ground
modules; it never imports the model, runtime, scorer, train, cli, daemon or bench layers. Heavy optional engines
(exiv2 for XMP, Jinja2 for the report) are imported by the modules that need them, so ``import pmllm_batch.outputs``
stays cheap.
"""

from __future__ import annotations
