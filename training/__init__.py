"""Training on episode records (GRPO, SFT). The trainers come with the training issue; what is
here now is the bridge every trainer needs: records to token samples with loss masks."""

from training.samples import TrainingSample, group_advantages, samples_from_records

__all__ = ["TrainingSample", "group_advantages", "samples_from_records"]
