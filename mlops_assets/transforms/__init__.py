"""Transforms of the medallion and the feature tables: narwhals, with engine fast paths inside."""

import narwhals as nw

# Narwhals implementations that run on Spark (classic sessions and Spark Connect).
SPARK_LIKE = (nw.Implementation.PYSPARK, nw.Implementation.PYSPARK_CONNECT)
