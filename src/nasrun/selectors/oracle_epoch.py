"""The epoch whose genotype the tabular benchmark scores best: the best architecture a search ever held, an upper
bound for every stop rule ([SS] Table 3's "optimal" row: "the best accuracies ever obtained by DARTS")."""

from ..errors import UserError


class OracleEpoch:
    """Query the benchmark for every epoch's genotype and keep the best one (the first such epoch on ties).

    An oracle, not a search method: it reads the benchmark's test results, which a search must never see. Its use is
    the ceiling a stop rule or selector is measured against (Ye et al., EX-/SS-DARTS, Table 3).

    Args:
        name: selector name.
        dataset: the benchmark dataset whose accuracy ranks the epochs (``cifar10``, ``cifar100``,
            ``ImageNet16-120``; null: the search's own, as its per-epoch records).
        split: ``test`` or ``valid`` accuracy.
    """

    reads_alpha = True  # the genotypes come from α

    history_only = True  # reads the metrics history (and the benchmark) only, not the supernet

    def __init__(self, name="oracle_epoch", dataset=None, split="test"):
        if split not in ("test", "valid"):
            raise UserError(f"selector.split={split!r}: choose test or valid")
        self.name, self.dataset, self.split = name, dataset, split

    def check_setup(self, space, **_):
        if getattr(space, "benchmark", None) is None:
            raise UserError(f"selector=oracle_epoch ranks epochs by a tabular benchmark, and space={space.name} has "
                            "none; use it on nb201 or nb1shot1 spaces")

    def select(self, space, method, history, bench=None, bench_dataset=None, **_state):
        if bench is None:
            raise UserError("selector=oracle_epoch needs the benchmark file: give benchmark.path=... (README "
                            "\"Benchmarks\")")
        dataset = self.dataset or bench_dataset
        scores = []
        for t, record in enumerate(history):
            genotype = space.parse_genotype(record["genotype"])
            result = bench.query(genotype, dataset)
            if result is not None and result.get(f"{self.split}_acc") is not None:
                scores.append((float(result[f"{self.split}_acc"]), -t, genotype))
        if not scores:
            raise UserError(f"selector=oracle_epoch: no epoch's genotype is in the benchmark ({dataset}); is "
                            "benchmark.path the full table?")
        _, t, genotype = max(scores, key=lambda s: s[:2])
        return [(f"{self.name}_{dataset}@{-t}", genotype)]
