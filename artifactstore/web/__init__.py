"""The dashboard: the registry in a browser (docs/web.md).

``artifactstore serve`` runs ``app.serve``: a Starlette app whose pages (overview, model, version
compare) are rendered on the server from ``dashboard.Dashboard``, charts as inline SVG
(``svg``), with actions for signed-in token holders (``actions``, ``auth``). It sits above
``store``: it reads and acts through the ``Store`` facade, so that an action from the browser is
exactly the command's (release rule, audit entry, hooks).

Needs the ``serve`` extra (Starlette, uvicorn, Jinja2).
"""
