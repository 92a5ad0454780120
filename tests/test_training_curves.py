"""Training curves on the Model page: the card's recorded epochs become a frame and a 2 × 2 panel figure."""

from __future__ import annotations

from dashboard import charts, data


def test_recorded_epochs_are_plotted_panel_by_panel() -> None:
    history = [{"epoch": e, "top1": 0.8 + e / 100, "train_task": 1 / e, "test_loss": 0.5, "est_bytes": 900.0 * e,
                "conv_slice_sparsity": 0.1 * e, "weight_sparsity": 0.2} for e in (1, 2, 3)]
    frame = data.training_history({"training": {"history": [*history, "junk", {"top1": 0.5}]}})
    assert frame["epoch"].tolist() == [1, 2, 3]  # rows without an epoch are left out
    fig = charts.history_lines(frame)
    assert [trace.name for trace in fig.data] == ["test top-1 (%)", "train loss", "test loss",
                                                  "estimated latents (KB)", "zero K×K slices (%)", "zero weights (%)"]
    assert list(fig.data[0].y) == [81.0, 82.0, 83.0] and list(fig.data[3].y) == [0.9, 1.8, 2.7]
    # 2 × 2 panels, not four in a row (a 390 px phone would give each ~70 px): top-1 | loss / latents | sparsity
    panels = [(t.xaxis, t.yaxis) for t in fig.data]
    assert panels == [("x", "y"), ("x2", "y2"), ("x2", "y2"), ("x3", "y3"), ("x4", "y4"), ("x4", "y4")]
    layout = fig.layout
    assert layout.xaxis.domain == layout.xaxis3.domain and layout.xaxis2.domain == layout.xaxis4.domain  # 2 columns
    assert layout.yaxis.domain == layout.yaxis2.domain and layout.yaxis3.domain == layout.yaxis4.domain  # 2 rows
    assert layout.yaxis3.domain[1] < layout.yaxis.domain[0]
    assert layout.xaxis.dtick == 1  # whole epochs, no "1.5"
    many = data.training_history({"training": {"history": [{"epoch": e, "top1": 0.5} for e in range(1, 91)]}})
    assert charts.history_lines(many).layout.xaxis.dtick == 20
    assert fig.data[1].line.color != fig.data[2].line.color and fig.data[2].line.dash == "dash"  # train / test
    assert [a.text for a in layout.annotations] == ["Test top-1 (%)", "Loss", "Est. latents (KB)",
                                                    "Sparsity (%)"]
    assert data.training_history({"training": {"history": []}}).empty and data.training_history({}).empty


def test_a_partial_history_plots_what_it_has() -> None:
    fig = charts.history_lines(data.training_history({"training": {"history": [{"epoch": 1, "top1": 0.9}]}}))
    assert [trace.name for trace in fig.data] == ["test top-1 (%)"]
