from pathlib import Path

import numpy as np
import pytest

from gateway.layout import LayoutError, load_layout, points_in_polygon

REPO = Path(__file__).resolve().parents[2]


def test_demo_layout_loads_and_is_the_embedded_one() -> None:
    lay = load_layout(REPO / "hardware/layouts/demo-store.toml")
    assert len(lay.sensors) == 12 and lay.store.width_m == 30
    assert (REPO / "hardware/layouts/demo-store.toml").read_text() == (
        REPO / "gateway/data/demo-store.toml"
    ).read_text()


def test_points_in_polygon() -> None:
    sq = [(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (0.0, 2.0)]
    pts = np.array([[1, 1], [3, 1], [-0.1, 0.5], [1.9, 1.9]], dtype=float)
    assert points_in_polygon(pts, sq).tolist() == [True, False, False, True]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[store]\nid='s'\nwidth_m=10\ndepth_m=10\n", "sensors"),
        ("[store]\nid='s'\nwidth_m=-1\ndepth_m=10\n[[sensors]]\nid='a'\nx=1\ny=1\n", "store.width_m"),
        (
            "[store]\nid='s'\nwidth_m=10\ndepth_m=10\n[[sensors]]\nid='a'\nx=1\ny=1\n[[sensors]]\nid='a'\nx=2\ny=2\n",
            "duplicate sensor",
        ),
        (
            "[store]\nid='s'\nwidth_m=10\ndepth_m=10\n[[sensors]]\nid='a'\nx=1\ny=1\n"
            "[[zones]]\nid='z'\npolygon=[[0,0],[1,1],[2,2]]\n",
            "zones[0].polygon",
        ),
        ("[store]\nid='s'\nwidth_m=10\ndepth_m=10\ncolour='red'\n[[sensors]]\nid='a'\nx=1\ny=1\n", "unknown key"),
    ],
)
def test_bad_layouts_name_the_field(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "l.toml"
    p.write_text(text)
    with pytest.raises(LayoutError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_layout(p)
