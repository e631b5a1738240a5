"""GRU-RCN on UCF-101 optical-flow features, pool2..pool5 (paper: 85.7%; fused with
RGB, see the README's two-stream recipe).

Flow features: OpenCV flow between consecutive frames, clipped to +-20 px and
stored as 0..255; each feature step is the flow VGG-16 (first convolution
cross-modality initialised from the RGB weights) on L=10 stacked flows, one per
stride-th flow step:

  python -m grurcn_jax.data.extract --source=ucf101 --modality=flow --flow=tvl1 \\
      --videos=UCF-101/ --splits=ucfTrainTestlist/ --split=1 \\
      --out=/data/ucf101_flow --levels=pool2,pool3,pool4,pool5 --frame_stride=5 \\
      --weights=imagenet

(`--flow=dis` is about 50x faster on a CPU: 13 ms against 620 ms a 320x240 pair,
one core of a 2-core AMD EPYC; `--source=flow_frames --videos=DIR` imports
flow_x/flow_y JPEGs made elsewhere in TSN's layout instead.) Then:

  python -m grurcn_jax.main --config=configs/ucf101_flow_grurcn.py --workdir=DIR \\
      --config.data.dir=/data/ucf101_flow

The paper's figure is of a flow VGG-16 fine-tuned on flow (Wang et al. 2015);
this recipe's is the ImageNet one, cross-modality initialised, not fine-tuned.
"""

from configs import default


def get_config():
  return default.get_config()
