"""GRU-RCN (uni-directional) on UCF-101 RGB features, pool2..pool5 (paper: 79.9%).

  python -m grurcn_jax.main --config=configs/ucf101_grurcn.py --workdir=DIR \\
      --config.data.dir=FEATURES

FEATURES: the README's UCF-101 extraction (--levels=pool2,pool3,pool4,pool5).
The paper's figure is of features from a VGG-16 fine-tuned on UCF-101 frames
(configs/ucf101_vgg16_finetune.py, then --weights=checkpoint:RUN) with random crops
(--augment); --weights=imagenet and centre crops give other numbers.
"""

from configs import default


def get_config():
  return default.get_config()
