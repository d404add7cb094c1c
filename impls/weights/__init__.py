"""Trained models shipped with the package: every model the suites train at smoke and quick sizes on a CPU, so that a
first `bench run` at those sizes trains nothing.

Files sit here as impls.cache names them (<namespace>/<sha256 of the key>.pt, the key stored beside the payload) and
impls.cache consults them before the user cache; a file whose key differs from the one asked is ignored and the model
trained. State dicts are stored in fp16. reference.json lists each model with its training time, bytes and quality
as trained and as shipped. Rebuild with `python -m impls.weights build` (impls/weights/build.py); what ships is
declared in recipes.py. Full size is not shipped: it trains on the target machine and is cached there.
"""
