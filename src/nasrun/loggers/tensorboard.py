"""TensorBoard: event files in the run directory (``<run>/tensorboard/<name>``), written by PyTorch's SummaryWriter."""

from pathlib import Path

from . import require, safe_name


class TensorBoardLogger:
    """Scalars per epoch, α heat maps (images) and histograms, the genotype as text, the config as hyper-parameters
    (the HParams tab) and as text; a resumed run writes with ``purge_step`` so TensorBoard drops anything logged
    after the last epoch the run had sent.

    Args:
        name: the tracker's name in trackers.json.
        log_dir: where the event files go (null: ``<run>/tensorboard``); the run's name is a folder below it, so
            ``tensorboard --logdir <sweep dir>`` lists a sweep's jobs by their overrides.
    """

    def __init__(self, name="tensorboard", log_dir=None):
        self.name, self.log_dir = name, log_dir
        self.summary = require("torch.utils.tensorboard", "tensorboard")
        self.writer = None

    def open(self, run_dir, info, state, logged):
        path = Path(self.log_dir) if self.log_dir else Path(run_dir) / "tensorboard"
        path = Path(state.get("dir") or path / safe_name(info.name))
        # resuming: TensorBoard drops whatever these files hold from step `logged` on (it is sent again)
        self.writer = self.summary.SummaryWriter(str(path), purge_step=logged if state.get("dir") else None)
        if not logged:
            from torch.utils.tensorboard.summary import hparams

            params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in info.config.items()}
            for s in hparams(params, {}):
                self.writer.file_writer.add_summary(s)
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in info.config.items()), 0)
        return {"dir": str(path)}

    def log(self, epoch, scalars, images, histograms, genotype):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, epoch)
        for key, image in images.items():
            self.writer.add_image(f"alpha/{key}", image, epoch, dataformats="HWC")
        for key, values in histograms.items():
            self.writer.add_histogram(f"alpha/{key}", values.ravel(), epoch)
        if genotype:
            self.writer.add_text("genotype", f"    {genotype}", epoch)
        self.writer.flush()

    def artefacts(self, paths):
        for path in paths:
            if path.suffix == ".json":
                self.writer.add_text(f"artefacts/{path.name}", "    " + path.read_text().replace("\n", "\n    "))
            elif path.suffix == ".png":
                import numpy as np
                from PIL import Image

                self.writer.add_image(f"report/{path.stem}", np.asarray(Image.open(path).convert("RGB")),
                                      dataformats="HWC")
        self.writer.flush()

    def close(self, finished):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
