"""feclip.progress: bars carry the running job's name, and only inside the job."""

import io

from feclip.progress import job_label, label, progress


def test_bars_are_labelled_with_the_job_inside_it_only():
    assert label("epoch 1/9") == "epoch 1/9"
    with job_label("C-fft"):
        assert label("epoch 1/9") == "C-fft · epoch 1/9"
        with job_label("inner"):
            assert label("predict") == "inner · predict"
        stream = io.StringIO()
        assert list(progress(range(3), "predict", file=stream)) == [0, 1, 2]
        assert "C-fft · predict" in stream.getvalue()
    assert label("predict") == "predict"
