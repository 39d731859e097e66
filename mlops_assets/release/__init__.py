"""How code reaches prod: the staging stage of a release and the deployment to prod.

`staging` runs the daily loop on the staging environment against prod's champion (copied,
read-only); `deploy` records a code deployment in prod and says which assets it makes stale.
Models move on their own lifecycle (`models/lifecycle.py`), never through a release.
"""
