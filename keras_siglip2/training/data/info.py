"""What an `image_text_dataset` pipeline is and has delivered, for a run summary
(paper sec. 2): its configuration, the data report (delivered / skipped / filtered
examples, the first bad record of each reason), which LocCa tasks are active given
the boxes seen (sec. 2.2), and the M4 balancing targets and achieved statistics."""

from keras_siglip2.training.data.locca_targets import TASKS


class DatasetInfo:
    """`dataset.info` of an `image_text_dataset`.

    Attributes:
        config: the `config.DataConfig` of the pipeline.
        report: its `report.DataReport`.
        source: its `readers.Source`.
        balancing: the `balance_stage.BalancingStage`, or None.
    """

    def __init__(self, config, report, source, balancing=None):
        self.config = config
        self.report = report
        self.source = source
        self.balancing = balancing

    @property
    def examples_with_regions(self):
        """Delivered examples (so far) with a region: a box with a box caption."""
        return int(self.report.with_regions.numpy())

    @property
    def boxes_seen(self):
        """Whether any delivered example so far had a region box."""
        return self.examples_with_regions > 0

    def locca_tasks(self):
        """The LocCa tasks that train, from what was delivered so far: () without LocCa;
        captioning always; ARef and GCap once an example with a region was delivered
        (a dataset without boxes trains captioning only). Tasks with a 0 in
        `task_weights` are off."""
        locca = self.config.locca
        if not locca.enabled:
            return ()
        on = [t for t, w in zip(TASKS, locca.task_weights) if float(w) > 0]
        return tuple(t for t in on if t == "captioning" or self.boxes_seen)

    def balancing_statistics(self):
        """`BalancingStage.statistics()`, or None without balancing."""
        return None if self.balancing is None else self.balancing.statistics()

    def as_dict(self):
        """{"config", "report", "locca_tasks", "examples_with_regions", "balancing"}:
        plain values for a run summary."""
        return {"config": self.config.to_dict(), "report": self.report.as_dict(),
                "locca_tasks": list(self.locca_tasks()),
                "examples_with_regions": self.examples_with_regions,
                "balancing": self.balancing_statistics()}
