"""prepare: decode and resize every image once into the uint8 cache that training streams (with the
central box blacked out when data.occlude > 0: the lungs-removed audit)."""

from pathlib import Path

from chestxray import paths, stage  # stage first: it quiets TensorFlow before the step imports it
from chestxray.data.cache import prepare_cache

if __name__ == "__main__":
    stage.run_stage(
        "prepare",
        lambda p: prepare_cache(Path(paths.SPLIT_CSV), Path(paths.CACHE_DIR), p.data.image_size, p.data.occlude),
    )
