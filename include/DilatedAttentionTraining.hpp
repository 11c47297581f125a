// DilatedAttention's training stack: the language model over the seed's blocks and what trains
// it (optimizers, clipping, schedule, loss scaling, checkpoints, the byte corpus, the trainer).
// Includes DilatedAttention.hpp. It sits in include/, above the folders it gathers.
#ifndef DILATED_ATTENTION_TRAINING_HPP
#define DILATED_ATTENTION_TRAINING_HPP

#include <DilatedAttention.hpp>
#include <Dilated_LanguageModel.hpp>
#include <Dilated_AdamW.hpp>
#include <Dilated_AdamW8bit.hpp>
#include <Dilated_GradientClipping.hpp>
#include <Dilated_LearningRateSchedule.hpp>
#include <Dilated_LossScaler.hpp>
#include <Dilated_Checkpoint.hpp>
#include <Dilated_ByteCorpus.hpp>
#include <Dilated_Trainer.hpp>
#include <Dilated_TrainingMemoryPlan.hpp>

#endif  // DILATED_ATTENTION_TRAINING_HPP
