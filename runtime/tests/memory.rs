//! The storage meter. It is process-wide, so these checks live in their own test binary and
//! take a lock: no other test allocates tensors beside them.

use odeflow_runtime::{memory, DType, Tensor};
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn buffers_are_charged_while_alive_and_views_are_free() {
    let _lock = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let base = memory::live_bytes();
    let x = Tensor::zeros(&[10, 100], DType::F32);
    assert_eq!(memory::live_bytes() - base, 4000, "1000 f32 = 4000 bytes");

    // views share the buffer: no new bytes
    let views = (
        x.t().unwrap(),
        x.narrow(0, 2, 3).unwrap(),
        x.reshape(&[1000]).unwrap(),
    );
    assert_eq!(memory::live_bytes() - base, 4000);

    // a copy is a new buffer; bf16 costs 2 bytes per element
    let y = x.t().unwrap().contiguous().unwrap();
    let h = x.to_dtype(DType::BF16).unwrap();
    assert_eq!(memory::live_bytes() - base, 4000 + 4000 + 2000);

    // the buffer is refunded when the last tensor sharing it goes
    drop(x);
    assert_eq!(
        memory::live_bytes() - base,
        10000,
        "views still hold x's buffer"
    );
    drop(views);
    assert_eq!(memory::live_bytes() - base, 6000);
    drop((y, h));
    assert_eq!(memory::live_bytes(), base);
}

#[test]
fn peak_records_the_high_water_mark_of_a_window() {
    let _lock = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (_, usage) = memory::measure(|| {
        let a = Tensor::ones(&[256], DType::F32); // 1 KiB
        let b = a.exp().unwrap(); // +1 KiB: peak 2 KiB
        drop(a);
        drop(b);
    });
    assert_eq!(usage.peak, 2048);
    assert_eq!(usage.retained, 0, "everything was dropped inside");

    // the result is alive when `measure` reads the meter, so it counts as retained
    let (kept, usage) = memory::measure(|| Tensor::ones(&[256], DType::F32));
    assert_eq!((usage.peak, usage.retained), (1024, 1024));
    drop(kept);

    memory::reset_peak();
    assert_eq!(memory::peak_bytes(), memory::live_bytes());
}
