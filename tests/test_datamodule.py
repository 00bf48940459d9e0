"""ContentDataModule: which images train and which are held out, batch for batch (real files, real loaders)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def test_a_folder_trains_on_what_its_shards_hold(tmp_path):
    """A folder and `stylepipe resize` of it: the same images (hidden files left out), in the same
    order, so the same held-out ones, and the same pixels, batch for batch."""
    from stylepipe.data.resize import resize_folder
    from stylepipe.datamodule import ContentDataModule

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    # "a/b" sorts after "a-c" as text (as resize sorts), before it as path parts
    for i, name in enumerate(["a/b.png", "a-c.png", "z.jpg", "d/e.png", "f.png", "g.png"]):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 31 - 2 * i, 3), dtype=np.uint8)).save(folder / name)
    (folder / "._f.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS metadata beside a copied image
    resize_folder(folder, tmp_path / "shards", 16)
    batches = {}
    # worker processes change nothing either: the sampler runs in the main process, decoding has no randomness
    for data, workers in ((folder, 0), (tmp_path / "shards", 0), (folder, 2)):
        dm = ContentDataModule(data, image_size=16, batch_size=2, val_images=2, seed=5, num_workers=workers)
        dm.setup("fit")
        batches[data, workers] = [*dm.train_dataloader(), *dm.val_dataloader()]
    first, *others = batches.values()
    assert [b.shape[0] for b in first] == [2, 2, 2]
    for other in others:
        assert len(other) == len(first) and all(torch.equal(a, b) for a, b in zip(first, other))
