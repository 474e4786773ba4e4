#!/usr/bin/env bash
# The default model's whole recipe (worldsim/default_model), from an empty directory: the toy world's data, the
# codec, the 25,000-step teacher, the reference flow, the teacher's fine-tunes, the distilled student and its
# long-rollout self-forcing, the package and its evaluation. Everything goes to ./runs; the package to
# runs/default_model (serve it with `worldsim serve --model runs/default_model`).
#
#   bash /path/to/worldsim/scripts/train_default_model.sh             # about 7 h on one CPU thread
#   BASELINE=1 bash .../train_default_model.sh                        # also the teacher-forcing baseline (+2 h 40 min)
#   SMOKE=1 bash .../train_default_model.sh                           # every command, 2 steps each (a few minutes)
#
# Re-running continues where it stopped: a finished stage (its final weights exist) is skipped, an interrupted one
# resumes from its newest checkpoint, bit-exactly on the CPU. The times are one torch thread each, measured on the
# 2-core VM the default was made on; the weights will not be the default's bit for bit (its stages ran across code
# versions and sittings), the recipe is. README, "The default model", has the evaluation to compare with.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # one thread per process is fastest on a small shared CPU
SMOKE="${SMOKE:-0}"
BASELINE="${BASELINE:-0}"

t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
steps() { if [ "$SMOKE" = 1 ]; then echo 2; else echo "$1"; fi; }   # a stage's step count (2 in a smoke run)
VAL=16; EPISODES=320; EVAL="--episodes 8 --chunks 60 --prompt-frames 320 --switch-frames 96"
if [ "$SMOKE" = 1 ]; then VAL=2; EPISODES=8; EVAL="--episodes 2 --chunks 4 --prompt-frames 0 --switch-frames 0"; fi

# logged LOG CMD...: run CMD with its output in LOG; on failure, say where to look and stop.
logged() {
    local log=$1
    shift
    "$@" > "$log" 2>&1 || { echo "failed: see $log" >&2; exit 1; }
}

# train STAGE OUT MODEL_FILE ARGS...: one `worldsim train` stage into runs/OUT, skipped once runs/OUT/final/MODEL_FILE
# exists, resumed from its newest checkpoint if it was interrupted; its log goes to runs/OUT.log.
train() {
    local stage=$1 out=runs/$2 file=$3
    shift 3
    if [ -f "$out/final/$file" ]; then stamp "$stage -> $out: done before, skipped"; return; fi
    local resume=()
    if [ -f "$out/checkpoints/latest" ]; then resume=(--resume); fi
    stamp "$stage -> $out ${resume[*]}"
    logged "$out.log" worldsim train "$stage" --out "$out" "${resume[@]}" "$@"
}

mkdir -p runs
stamp "data: the toy world, 320 episodes of 64 frames, and as many that walk back as often as forwards (~1 min)"
[ -f runs/toy_data/dataset.json ] || worldsim world dataset --episodes $EPISODES --frames-per-episode 64 \
    --switches 0 --out runs/toy_data --workers 2 --quiet
[ -f runs/bal_data/dataset.json ] || worldsim world dataset --episodes $EPISODES --frames-per-episode 64 \
    --switches 0 --backward 0.5 --out runs/bal_data --workers 2 --quiet

# 1. The codec (9 min), its decoder trained on the round trip (7.5 min); the reference flow (1.5 min).
train codec codec codec.safetensors --max-steps "$(steps 800)"
train codec codec_cyc codec.safetensors --init runs/codec/final/codec.safetensors stage.train_encoder=false \
    stage.cycle_weight=0.3 optim.lr=3e-4 --max-steps "$(steps 1200)"
train flow flow flow.safetensors --max-steps "$(steps 3000)"
C0=runs/codec/final/codec.safetensors; C=runs/codec_cyc/final/codec.safetensors; F=runs/flow/final/flow.safetensors

# 2. The teacher: 25,000 steps (2 h 50 min), 6,000 by teacher forcing with the reference flow (39 min), 3,000 on
#    the balanced data with the round-trip codec (14 min).
train teacher teacher teacher.safetensors --max-steps "$(steps 25000)" val_every=1000 ckpt_every=1000 val_batches=8 \
    data.val_episodes=$VAL
train teacher flow_teacher teacher.safetensors --init runs/teacher/final/teacher.safetensors \
    stage.reference_flow=$F optim.lr=1e-4 data.codec=$C0 data.val_episodes=$VAL --max-steps "$(steps 6000)"
train teacher bal_teacher teacher.safetensors --init runs/flow_teacher/final/teacher.safetensors \
    --data runs/bal_data stage.reference_flow=$F optim.lr=1e-4 data.codec=$C data.val_episodes=$VAL \
    --max-steps "$(steps 3000)"
T=runs/bal_teacher/final/teacher.safetensors

# 3. The reference flow streamed through the codec (6 min), calibrated to the world's speed (1 min).
train flow bal_flow flow.safetensors --init $F --data runs/bal_data data.codec=$C stage.through_codec=true \
    stage.streamed=true data.val_episodes=$VAL --max-steps "$(steps 400)"
FC=runs/flow_calibrated.safetensors
if [ -f $FC ]; then stamp "calibrate-flow -> $FC: done before, skipped"; else
    stamp "calibrate-flow -> $FC"
    logged runs/calibrate_flow.log worldsim world calibrate-flow --flow runs/bal_flow/final/flow.safetensors \
        --codec $C --out $FC $( [ "$SMOKE" = 1 ] && echo "--episodes 2 --rounds 1" )
fi

# 4. The student: ode-init (300 steps, 10 min), self-forcing (3,000 steps, 20 min), 1,500 more with the calibrated
#    flow (11 min), then through a rolling 6-frame window on rollouts of 12 frames (1,801 steps, 22 min), 24
#    (1,045, 22 min) and 48 with the palette term (1,719, 75 min; the critic afresh from the teacher).
SF=(--data runs/bal_data stage.teacher=$T data.codec=$C data.val_episodes=$VAL)
train ode-init ode generator.safetensors "${SF[@]}" stage.reference_flow=$F --max-steps "$(steps 300)"
train self-forcing sf generator.safetensors "${SF[@]}" stage.reference_flow=$F \
    stage.student=runs/ode/final/generator.safetensors --max-steps "$(steps 3000)"
train self-forcing sf_cal generator.safetensors "${SF[@]}" stage.reference_flow=$FC \
    stage.student=runs/sf/final/generator.safetensors --max-steps "$(steps 1500)"
train self-forcing sf12 generator.safetensors "${SF[@]}" stage.reference_flow=$FC stage.window_frames=6 \
    data.clip_chunks=12 stage.student=runs/sf_cal/final/generator.safetensors \
    stage.critic=runs/sf_cal/final/critic.safetensors --max-steps "$(steps 1801)"
train self-forcing sf24 generator.safetensors "${SF[@]}" stage.reference_flow=$FC stage.window_frames=6 \
    data.clip_chunks=24 stage.student=runs/sf12/final/generator.safetensors \
    stage.critic=runs/sf12/final/critic.safetensors --max-steps "$(steps 1045)"
train self-forcing sf48 generator.safetensors "${SF[@]}" stage.reference_flow=$FC stage.window_frames=6 \
    data.clip_chunks=48 stage.student=runs/sf24/final/generator.safetensors stage.moment_weight=3 \
    --max-steps "$(steps 1719)"

# 5. The package as the default serves it (hold the idle reference, a 6-frame window, each frame after the first
#    from its reference at step 2, a start frame per theme, the teacher beside it), then its evaluation (~12 min).
stamp "package -> runs/default_model"
logged runs/package.log python "$REPO/scripts/embed_default_model.py" runs/sf48/final --out runs/default_model \
    --name "toy-world student (scripts/train_default_model.sh)" --hold-idle-reference --window-frames 6 \
    --reference-start 2 --theme-starts forest=20000,desert=20001,snow=20001,lava=20002,dungeon=20004 \
    --include $T
MODELS=(--model default=runs/default_model)

# 6. Optional: the teacher-forcing baseline of equal compute (the distillation's 160 minutes: 33,357 steps of the
#    balanced teacher's fine-tune), served the same way.
if [ "$BASELINE" = 1 ]; then
    train teacher tf_baseline teacher.safetensors --init $T --data runs/bal_data stage.reference_flow=$FC \
        optim.lr=1e-4 data.codec=$C data.val_episodes=$VAL --max-steps "$(steps 33357)"
    rm -rf runs/baseline_model && cp -r runs/default_model runs/baseline_model
    cp runs/tf_baseline/final/teacher.safetensors runs/baseline_model/generator.safetensors
    MODELS+=(--model tf_baseline=runs/baseline_model)
fi

stamp "evaluation -> runs/eval (held-out episodes; README, Training: Evaluating)"
python "$REPO/benchmarks/toy_eval.py" "${MODELS[@]}" --codec $C --held-frames 12 $EVAL --out runs/eval 2>&1 \
    | tee runs/eval.log
stamp "done: worldsim serve --model runs/default_model"
