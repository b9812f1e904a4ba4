"""Read os-train's TensorBoard event files with TensorBoard's own reader and print every scalar
series as JSON: {tag: [[step, value], ...]}. Usage: train_tensorboard.py RUN_DIR/tensorboard"""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator

acc = event_accumulator.EventAccumulator(sys.argv[1], size_guidance={event_accumulator.SCALARS: 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
