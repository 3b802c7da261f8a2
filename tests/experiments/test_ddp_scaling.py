"""benchmarks.ddp_scaling reads the rates out of the torchrun runs' outputs and relates them to the 1-GPU run."""
import pytest

from benchmarks.ddp_scaling import rl_sequences_per_second, scaling_rows, vision_images_per_second


def test_rates_are_read_from_the_logs(tmp_path):
    log = tmp_path / "vision.log"
    log.write_text("warning\nvil @ 224px, batch 256 per process, 2 process(es), compile=False: 2356 img/s in total, "
                   "1178 per process\n")
    assert vision_images_per_second(log) == 2356
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,loss,accuracy,lr,seconds\n100,1.5,0.5,1e-4,11.5\n200,0.4,0.8,1e-4,21.5\n"
                       "300,0.2,0.9,1e-4,31.5\n")
    assert rl_sequences_per_second(metrics, gpus=2, batch_per_gpu=128) == pytest.approx(2 * 128 * 200 / 20)
    (tmp_path / "empty.log").write_text("Traceback\n")
    with pytest.raises(ValueError, match="img/s"):
        vision_images_per_second(tmp_path / "empty.log")


def test_speed_up_is_relative_to_one_gpu():
    rows = scaling_rows("m", "train", "img/s", {2: 300.0, 1: 200.0})
    speed_up = {r["gpus"]: r["value"] for r in rows if r["metric"] == "speed-up"}
    assert speed_up == {1: 1.0, 2: 1.5}
