"""Studies built on the pipeline: the depthwise degradation study, ShuffleNetV2's guidelines, the
latency estimate, and the zoo and Raspberry Pi benches (each runnable with ``python -m``)."""
