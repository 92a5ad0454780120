"""Published points beside the zoo on the Compare page: compressed results (EPR on MNIST) and, for
Fashion-MNIST, dense networks from the dataset's own benchmark table."""

from __future__ import annotations

from dashboard.references import DENSE_PUBLISHED, PUBLISHED, references_for


def test_fashion_mnist_points_are_dense_networks_from_the_benchmark_table() -> None:
    points = references_for({"fashion-mnist"})
    assert points == list(DENSE_PUBLISHED) and len(points) == 3
    assert all("zalandoresearch/fashion-mnist" in r.source and "claimed" in r.label for r in points)
    assert [r.size_kb for r in points] == [4 * 113, 4 * 768, 4 * 8900]  # 4 bytes x the stated parameters
    assert references_for({"mnist"}) == list(PUBLISHED)  # MNIST keeps the compressed EPR points only
