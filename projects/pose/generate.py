"""A small synthetic Turkish sign-language pose corpus, generated deterministically (the default data).

No public Turkish sign-language pose corpus can be downloaded here, so each word of a Turkish vocabulary gets
its own smooth, distinctive motion of the 50-joint skeleton (arm angles, hand orientation, finger curls, head
movement through 2-3 keyframes, optionally a wiggle). A sentence is a few words: rest pose, then each word's
motion with a speed factor and eased transitions in between, then rest. Frames are 25 fps ``x y z`` per joint,
written in the exact ``.text/.skels/.files`` format with the counter ``t / T``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from projects.pose.formats import progress_counter, write_split
from projects.pose.vocabulary import turkish_upper_first

VERSION = 2
WORDS = [
    "merhaba",
    "ben",
    "sen",
    "biz",
    "okul",
    "ev",
    "su",
    "kitap",
    "anne",
    "baba",
    "çocuk",
    "öğretmen",
    "arkadaş",
    "araba",
    "şehir",
    "iyi",
    "ılık",
    "ırmak",
    "istemek",
    "gitmek",
    "gelmek",
    "içmek",
    "yemek",
    "okumak",
    "güzel",
    "büyük",
    "küçük",
    "bugün",
    "yarın",
    "teşekkürler",
    "evet",
    "hayır",
]
NUM_PARAMS = 20  # see _forward_kinematics
REST = np.array([-0.15, 0.1, 0.15, -0.1, 0.0, 0.0, 0.0, 0.0] + [0.3] * 10 + [0.0, 0.0], dtype=np.float64)
LOW = np.array([-2.4, -2.2, 0.3, 0.0, -0.6, -0.6, -1.2, -1.2] + [0.0] * 10 + [-0.05, -0.04])
HIGH = np.array([-0.3, 0.0, 2.4, 2.2, 0.6, 0.6, 1.2, 1.2] + [1.4] * 10 + [0.05, 0.04])


def _direction(angle: np.ndarray) -> np.ndarray:
    """Unit vector at ``angle`` from straight down, image coordinates (x right, y down)."""
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1)


def _hand(
    wrist: np.ndarray,
    forearm_angle: np.ndarray,
    turn: np.ndarray,
    curls: np.ndarray,
    depth: np.ndarray,
    mirror: float,
) -> np.ndarray:
    """21 hand joints (root + 5 fingers x 4) for ``T`` frames: ``T x 21 x 3``."""
    frames = len(wrist)
    joints = np.zeros((frames, 21, 3))
    joints[:, 0, :2] = wrist
    spreads = np.array([-0.9, -0.35, 0.0, 0.3, 0.6]) * mirror
    for finger in range(5):
        angle = forearm_angle + turn + spreads[finger]
        base = wrist + 0.045 * _direction(angle)
        joints[:, 1 + 4 * finger, :2] = base
        point = base
        for segment in range(3):
            angle = angle + curls[:, finger] * mirror * 0.7
            point = point + (0.028 - 0.004 * segment) * _direction(angle)
            joints[:, 2 + 4 * finger + segment, :2] = point
    joints[:, :, 2] = depth[:, None] + 0.02 * np.sin(np.arange(21) / 3.0)[None, :]
    return joints


def _forward_kinematics(params: np.ndarray) -> np.ndarray:
    """``T x 20`` parameters -> ``T x 50 x 3`` joints in the Progressive Transformers order.

    Parameters: right shoulder/elbow angles, left shoulder/elbow angles, right/left depth, right/left hand
    turn, 5 right finger curls, 5 left finger curls, head dx, head dy.
    """
    frames = len(params)
    joints = np.zeros((frames, 50, 3))
    head = np.array([0.0, -0.55]) + params[:, 18:20]
    joints[:, 0, :2] = head
    joints[:, 1, :2] = [0.0, -0.35]
    upper, fore = 0.24, 0.21
    for side, (shoulder_x, first) in enumerate(((-0.2, 0), (0.2, 2))):
        shoulder = np.array([shoulder_x, -0.33])
        a1, a2 = params[:, first], params[:, first + 1]
        elbow = shoulder + upper * _direction(a1)
        wrist = elbow + fore * _direction(a1 + a2)
        base = 2 + 3 * side
        joints[:, base, :2] = shoulder
        joints[:, base + 1, :2] = elbow
        joints[:, base + 2, :2] = wrist
        depth = params[:, 4 + side]
        joints[:, base + 1, 2] = 0.5 * depth
        joints[:, base + 2, 2] = depth
        hand = _hand(
            wrist,
            a1 + a2,
            params[:, 6 + side],
            params[:, 8 + 5 * side : 13 + 5 * side],
            depth,
            mirror=-1.0 if side == 0 else 1.0,
        )
        # joints 8-28 hang off joint 7 (left wrist), 29-49 off joint 4 (right wrist)
        joints[:, (29 if side == 0 else 8) : (50 if side == 0 else 29)] = hand
    return joints


def _ease(steps: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, steps))


def _segment(start: np.ndarray, end: np.ndarray, steps: int) -> np.ndarray:
    return start + _ease(steps)[:, None] * (end - start)


def make_signs(rng: np.random.Generator, words: list[str]) -> dict[str, dict]:
    """Each word: 2-3 keyframes of parameters, a base duration in frames, and an optional wiggle."""
    signs = {}
    for word in words:
        keys = rng.uniform(LOW, HIGH, size=(int(rng.integers(2, 4)), NUM_PARAMS))
        wiggle = None
        if rng.random() < 0.5:
            wiggle = (int(rng.integers(0, 18)), float(rng.uniform(0.15, 0.35)), float(rng.uniform(1.5, 3.0)))
        signs[word] = {"keys": keys, "frames": int(rng.integers(14, 21)), "wiggle": wiggle}
    return signs


def sentence_motion(
    rng: np.random.Generator, words: list[str], signs: dict[str, dict], speed: float = 0.15, align: int = 1
) -> np.ndarray:
    """Parameters over time for a sentence: rest, each sign (speed-varied) with eased transitions, rest."""
    pieces = [np.repeat(REST[None], 3, axis=0)]
    current = REST
    for word in words:
        sign = signs[word]
        scale = rng.uniform(1.0 - speed, 1.0 + speed)
        pieces.append(_segment(current, sign["keys"][0], int(rng.integers(4, 7)))[1:])
        per_key = max(3, round(sign["frames"] * scale / (len(sign["keys"]) - 1)))
        motion = np.concatenate(
            [
                _segment(a, b, per_key + 1)[1:]
                for a, b in zip(sign["keys"][:-1], sign["keys"][1:], strict=True)
            ]
        )
        if sign["wiggle"] is not None:
            index, amplitude, cycles = sign["wiggle"]
            motion[:, index] += amplitude * np.sin(np.linspace(0, 2 * np.pi * cycles, len(motion)))
        pieces.append(motion)
        current = motion[-1]
    pieces.append(_segment(current, REST, 6)[1:])
    params = np.concatenate(pieces)
    if (len(params) - 1) % align:  # so that skip_frames=align keeps the last frame (counter exactly 1)
        params = np.concatenate([params, np.repeat(params[-1:], align - (len(params) - 1) % align, axis=0)])
    return params


def generate_corpus(
    out_dir: str | Path,
    num_train: int = 400,
    num_dev: int = 60,
    num_test: int = 60,
    min_words: int = 2,
    max_words: int = 4,
    num_words: int = 32,
    seed: int = 7,
    align: int = 2,
    decimals: int = 4,
) -> Path:
    """Write ``train/dev/test .text/.skels/.files`` into ``out_dir`` unless the manifest says they exist.

    Dev and test sentences are word combinations that never occur in train. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    settings = {
        "version": VERSION,
        "num_train": num_train,
        "num_dev": num_dev,
        "num_test": num_test,
        "min_words": min_words,
        "max_words": max_words,
        "num_words": num_words,
        "seed": seed,
        "align": align,
        "decimals": decimals,
    }
    manifest = out_dir / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == settings:
        return out_dir
    if not 1 <= num_words <= len(WORDS):
        raise ValueError(f"num_words must be in [1, {len(WORDS)}], got {num_words}")
    rng = np.random.default_rng(seed)
    vocabulary = WORDS[:num_words]
    signs = make_signs(rng, vocabulary)
    seen: set[str] = set()
    for split, count in (("train", num_train), ("dev", num_dev), ("test", num_test)):
        texts, sequences, names = [], [], []
        while len(texts) < count:
            words = list(rng.choice(vocabulary, size=int(rng.integers(min_words, max_words + 1))))
            text = " ".join(words)
            if text in seen:
                continue
            seen.add(text)
            params = sentence_motion(rng, words, signs, align=align)
            joints = _forward_kinematics(params) + rng.normal(0.0, 0.002, size=(len(params), 50, 3))
            frames = np.concatenate(
                [joints.reshape(len(params), -1), progress_counter(len(params))[:, None]], 1
            )
            texts.append(turkish_upper_first(text) + ("?" if rng.random() < 0.2 else "."))
            sequences.append(frames)
            names.append(f"{split}/synthetic_{len(texts):05d}")
        write_split(out_dir / split, texts, sequences, names, decimals=decimals)
    manifest.write_text(json.dumps(settings, indent=2))
    return out_dir
