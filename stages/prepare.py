"""prepare: decode and resize every image once into the uint8 cache that training streams."""

from chestxray.config import CACHE_DIR, SPLIT_CSV
from chestxray.data.cache import prepare_cache
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("prepare", lambda p: prepare_cache(SPLIT_CSV, CACHE_DIR, p.data.image_size))
