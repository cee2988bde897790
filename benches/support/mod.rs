//! What the benches share: deterministic inputs (no `rand` dependency) and
//! the 1024x1024 RGB8 test part. Each bench uses part of it.
#![allow(dead_code)]

use loupe::imaging::{FrameData, PixelFormat, RawFrame};

/// Side of the test frames.
pub const FRAME: usize = 1024;

/// Uniform values in [0, 1), from xorshift64.
pub fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// A textured 1024 x 1024 RGB8 part, shifted by `shift` pixels.
pub fn part(seed: u64, shift: f32) -> Vec<u8> {
    let noise = uniform(FRAME * FRAME, seed);
    let mut rgb = Vec::with_capacity(FRAME * FRAME * 3);
    for y in 0..FRAME {
        for x in 0..FRAME {
            let (fx, fy) = (x as f32 + shift, y as f32);
            let v = 128.0 + 40.0 * (fx * 0.1).sin() * (fy * 0.11).cos() + 12.0 * (noise[y * FRAME + x] - 0.5);
            let v = v as u8;
            rgb.extend_from_slice(&[v, v / 2, 255 - v]);
        }
    }
    rgb
}

pub fn frame(rgb: &[u8]) -> FrameData<'_> {
    FrameData::Raw(RawFrame {
        width: FRAME as u32,
        height: FRAME as u32,
        stride: 0,
        format: PixelFormat::Rgb8,
        data: rgb,
    })
}
