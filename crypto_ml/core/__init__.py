"""The foundation every other part builds on: errors, settings and log formats.

Owns the one exception hierarchy (:mod:`~crypto_ml.core.errors`, with the exit
code each kind means), every setting and the only code that reads the
environment (:mod:`~crypto_ml.core.settings`, including the math-library thread
counts), the text/JSON log formats (:mod:`~crypto_ml.core.logs`), Redis Sentinel URLs
(:mod:`~crypto_ml.core.sentinel`), the Redis ACL user of each role with the credential
check (:mod:`~crypto_ml.core.acl`), the prefix of each Redis key of ours
(:mod:`~crypto_ml.core.keys`), a stored task result read in either wire format
(:mod:`~crypto_ml.core.results`), the progress bar every command draws
(:mod:`~crypto_ml.core.progress`, on tqdm), Redis URLs read without redis-py
(:mod:`~crypto_ml.core.urls`) and whether a folder can be written
(:mod:`~crypto_ml.core.paths`). May import
nothing else of crypto_ml; everything else may import it.
"""
