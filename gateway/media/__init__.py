"""Media jobs (issue 14): image and video generation as queued jobs, with the studio API's and OpenAI's shapes.

- ``settings``: the ``media_*`` settings (a mixin of :class:`gateway.settings.Settings`);
- ``models`` and ``uploads``: request bodies, their limits, and safe decoding of uploaded images;
- ``queue``: the taskiq broker (in-process by default, Redis streams at scale) and the task it runs;
- ``runner``: runs one job on the media engine off the event loop (progress, cancellation, result files);
- ``service``: one app's jobs (submit, wait, cancel, the results sweep); ``worker``: ``voxgate worker``;
- ``routes`` and ``jobs_api``: the HTTP API (docs/media.md).

This package's ``__init__`` imports nothing: ``gateway.settings`` imports ``gateway.media.settings``.
"""
