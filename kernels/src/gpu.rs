//! One CUDA device: its context, its one stream, its loaded modules, and a caching allocator.
//!
//! Everything a device does is ordered on one stream, so a buffer freed by one op can be handed
//! to the next op at once: the next kernel runs after every kernel that used the buffer before.
//! That is what lets the allocator cache freed buffers instead of returning them to the driver
//! (a `cudaMalloc` per op would cost more than most of the ops).
//!
//! Nothing here touches the driver before `Gpu::new` has checked that `libcuda` can be loaded:
//! on a machine with no NVIDIA driver that is an `Error::NoDriver`, never a panic.

use crate::error::{cuda, Error, Result};
use crate::launch::MAX_STATIC_SHARED_BYTES;
use crate::module::Module;
use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // Only tries to open libcuda with the dynamic loader and closes it again; no CUDA
    // function is called.
    // SAFETY: sound for the reasons just given.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A CUDA device, shared by every buffer on it (`Arc<Gpu>`).
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// `Module::ALL[i]`, loaded on first use.
    modules: Vec<OnceLock<Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// PTX from outside `Module::ALL` (`extra_function`): the modules by name, and their
    /// kernels by (module name, kernel name).
    extra: Mutex<Extra>,
    pool: Mutex<Pool>,
}

impl Gpu {
    /// Device `ordinal`, with a fresh stream of its own.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        if !driver_present() {
            return Err(Error::NoDriver);
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda("cuCtxCreate"))?;
        let stream = ctx.new_stream().map_err(cuda("cuStreamCreate"))?;
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            modules: Module::ALL.iter().map(|_| OnceLock::new()).collect(),
            functions: Mutex::new(HashMap::new()),
            extra: Mutex::new(Extra::default()),
            pool: Mutex::new(Pool::default()),
        }))
    }

    /// The device's name, as the driver reports it ("NVIDIA H200").
    pub fn name(&self) -> Result<String> {
        self.ctx.name().map_err(cuda("cuDeviceGetName"))
    }

    /// (major, minor): (9, 0) for Hopper.
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        self.ctx
            .compute_capability()
            .map_err(cuda("cuDeviceGetAttribute"))
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits until every op queued on the device's stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(cuda("cuStreamSynchronize"))
    }

    /// The device's streaming multiprocessors (132 on the H200).
    pub fn multiprocessors(&self) -> Result<usize> {
        let sms = self
            .ctx
            .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda("cuDeviceGetAttribute"))?;
        Ok(sms.max(0) as usize)
    }

    /// Lets kernel `f` take `bytes` of dynamic shared memory: raises its limit where that is
    /// past the default 48 KB (which is also the static limit). The driver call wants the
    /// device's context current on this thread, as a launch does.
    pub fn allow_dynamic_shared(&self, f: &CudaFunction, bytes: u32) -> Result<()> {
        if bytes as usize > MAX_STATIC_SHARED_BYTES {
            self.ctx.bind_to_thread().map_err(cuda("cuCtxSetCurrent"))?;
            f.set_attribute(
                CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(cuda("cuFuncSetAttribute"))?;
        }
        Ok(())
    }

    /// How many blocks of kernel `f` (`threads` threads and `smem` bytes of dynamic shared
    /// memory each) one multiprocessor holds at once, by the driver's count of its registers
    /// and shared memory. 0 when not even one fits.
    pub fn blocks_per_multiprocessor(
        &self,
        f: &CudaFunction,
        threads: u32,
        smem: u32,
    ) -> Result<usize> {
        self.ctx.bind_to_thread().map_err(cuda("cuCtxSetCurrent"))?;
        let blocks = f
            .occupancy_max_active_blocks_per_multiprocessor(threads, smem as usize, None)
            .map_err(cuda("cuOccupancyMaxActiveBlocksPerMultiprocessor"))?;
        Ok(blocks as usize)
    }

    /// A timing mark: an event recorded on the device's stream after everything queued so far
    /// (`Mark::ms_since` gives the device time between two marks).
    pub fn mark(&self) -> Result<Mark> {
        let event = self
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda("cuEventRecord"))?;
        Ok(Mark(event))
    }

    /// The kernel `name` of `module`, loading the module into this device the first time.
    pub fn function(&self, module: Module, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.functions).get(name) {
            return Ok(f.clone());
        }
        let slot = &self.modules[module.index()];
        let loaded = match slot.get() {
            Some(m) => m.clone(),
            None => {
                let m = self
                    .ctx
                    .load_module(Ptx::from_src(module.ptx()))
                    .map_err(cuda("cuModuleLoadData"))?;
                slot.get_or_init(|| m).clone()
            }
        };
        let f = loaded
            .load_function(name)
            .map_err(cuda("cuModuleGetFunction"))?;
        lock(&self.functions).insert(name, f.clone());
        Ok(f)
    }

    /// The kernel `name` of a PTX text that is not one of `Module::ALL`: the numbered kernel
    /// versions of a workbench (`bench/flash/vN.cu`), which define the same kernel names as the
    /// module they compete with. `module` names the text: the first call with a module name
    /// loads `ptx` into this device, and later calls with that name reuse it (and ignore `ptx`),
    /// so one name must always go with one text. Each call that loads costs a JIT compile of the
    /// whole text; nothing is unloaded before the device is dropped.
    pub fn extra_function(
        &self,
        module: &'static str,
        ptx: &'static str,
        name: &'static str,
    ) -> Result<CudaFunction> {
        let mut extra = lock(&self.extra);
        if let Some(f) = extra.functions.get(&(module, name)) {
            return Ok(f.clone());
        }
        let loaded = match extra.modules.get(module) {
            Some(m) => m.clone(),
            None => {
                let m = self
                    .ctx
                    .load_module(Ptx::from_src(ptx))
                    .map_err(cuda("cuModuleLoadData"))?;
                extra.modules.insert(module, m.clone());
                m
            }
        };
        let f = loaded
            .load_function(name)
            .map_err(cuda("cuModuleGetFunction"))?;
        extra.functions.insert((module, name), f.clone());
        Ok(f)
    }

    /// An uninitialised buffer of at least `bytes` bytes, from the cache when one of its size
    /// class is free. The caller must write it before anything reads it.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        let class = size_class(bytes);
        let cached = lock(&self.pool).take(class);
        let slice = match cached {
            Some(slice) => slice,
            None => self.fresh(class)?,
        };
        lock(&self.pool).lend(class);
        Ok(DeviceBuffer {
            slice: Some(slice),
            bytes,
            gpu: self.clone(),
        })
    }

    /// A new driver allocation of `class` bytes; when the device is full, the cache is handed
    /// back to the driver and the allocation tried once more.
    fn fresh(self: &Arc<Self>, class: usize) -> Result<CudaSlice<u8>> {
        // The memory is uninitialised; `alloc`'s contract makes its user write it
        // before reading it (every launcher writes its whole output; uploads fill it).
        // SAFETY: sound for the reasons just given.
        let first = unsafe { self.stream.alloc::<u8>(class) };
        match first {
            Ok(slice) => Ok(slice),
            Err(_) => {
                lock(&self.pool).release();
                self.synchronize()?;
                // SAFETY: as above.
                unsafe { self.stream.alloc::<u8>(class) }.map_err(cuda("cuMemAlloc"))
            }
        }
    }

    /// Copies `data` into a new device buffer.
    pub fn upload<T: bytemuck::Pod>(self: &Arc<Self>, data: &[T]) -> Result<DeviceBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mut buf = self.alloc(bytes.len())?;
        if !bytes.is_empty() {
            self.stream
                .memcpy_htod(bytes, buf.slice_mut())
                .map_err(cuda("cuMemcpyHtoD"))?;
        }
        Ok(buf)
    }

    /// The buffer's contents, as `T`s (waits for the ops that write it).
    pub fn download<T: bytemuck::Pod>(&self, buf: &DeviceBuffer) -> Result<Vec<T>> {
        let size = std::mem::size_of::<T>();
        if !buf.bytes.is_multiple_of(size) {
            let msg = format!(
                "{} bytes is not a whole number of {size}-byte values",
                buf.bytes
            );
            return Err(Error::Launch {
                kernel: "download".into(),
                msg,
            });
        }
        let mut host = vec![T::zeroed(); buf.bytes / size];
        if buf.bytes > 0 {
            let view = buf.slice().slice(0..buf.bytes);
            let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut host);
            self.stream
                .memcpy_dtoh(&view, dst)
                .map_err(cuda("cuMemcpyDtoH"))?;
            self.synchronize()?;
        }
        Ok(host)
    }

    /// A device-to-device copy of `src` (the yardstick of the memory-bound kernels' benches).
    pub fn copy(self: &Arc<Self>, src: &DeviceBuffer) -> Result<DeviceBuffer> {
        let mut dst = self.alloc(src.bytes)?;
        if src.bytes > 0 {
            let view = src.slice().slice(0..src.bytes);
            self.stream
                .memcpy_dtod(&view, dst.slice_mut())
                .map_err(cuda("cuMemcpyDtoD"))?;
        }
        Ok(dst)
    }

    /// What the allocator holds now, and the most it held at once.
    pub fn memory(&self) -> MemoryStats {
        lock(&self.pool).stats()
    }

    /// Starts a new peak window: the peak becomes what is lent now.
    pub fn reset_peak(&self) {
        let mut pool = lock(&self.pool);
        pool.peak = pool.lent;
    }
}

/// Locks a mutex, carrying on after a panic elsewhere (the data it guards stays consistent:
/// every update is a single assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An event on a device's stream, from `Gpu::mark`.
pub struct Mark(CudaEvent);

impl Mark {
    /// Milliseconds of device time from `earlier` to this mark; waits until this mark is
    /// reached. The driver's resolution is about half a microsecond.
    pub fn ms_since(&self, earlier: &Mark) -> Result<f32> {
        earlier
            .0
            .elapsed_ms(&self.0)
            .map_err(cuda("cuEventElapsedTime"))
    }
}

/// The modules and kernels `Gpu::extra_function` loaded.
#[derive(Default)]
struct Extra {
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: HashMap<(&'static str, &'static str), CudaFunction>,
}

/// Device memory, returned to the device's cache when dropped.
pub struct DeviceBuffer {
    /// Always `Some` until `drop` hands it back.
    slice: Option<CudaSlice<u8>>,
    /// The size asked for (the allocation may be larger: its size class).
    bytes: usize,
    gpu: Arc<Gpu>,
}

impl DeviceBuffer {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The allocation, for kernel arguments.
    pub fn slice(&self) -> &CudaSlice<u8> {
        self.slice.as_ref().expect("present until drop")
    }

    pub fn slice_mut(&mut self) -> &mut CudaSlice<u8> {
        self.slice.as_mut().expect("present until drop")
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            lock(&self.gpu.pool).give_back(slice);
        }
    }
}

/// Bytes lent out, their peak, and bytes cached (freed, kept for reuse), in size classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub lent: usize,
    pub peak: usize,
    pub cached: usize,
}

/// Allocations are rounded up to a size class so that a freed buffer fits the next request of
/// about its size: multiples of 512 bytes up to 1 MiB (activations of small ops), multiples of
/// 2 MiB above (the driver's own granularity for large allocations).
pub fn size_class(bytes: usize) -> usize {
    const SMALL: usize = 512;
    const LARGE: usize = 2 << 20;
    if bytes <= 1 << 20 {
        bytes.max(1).div_ceil(SMALL) * SMALL
    } else {
        bytes.div_ceil(LARGE) * LARGE
    }
}

/// The cache: free buffers by size class, and the meter.
#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<CudaSlice<u8>>>,
    lent: usize,
    peak: usize,
    cached: usize,
}

impl Pool {
    /// A cached buffer of exactly `class` bytes, if one is free.
    fn take(&mut self, class: usize) -> Option<CudaSlice<u8>> {
        let slice = self.free.get_mut(&class)?.pop()?;
        self.cached -= class;
        Some(slice)
    }

    fn lend(&mut self, class: usize) {
        self.lent += class;
        self.peak = self.peak.max(self.lent);
    }

    fn give_back(&mut self, slice: CudaSlice<u8>) {
        let class = slice.len();
        self.lent -= class;
        self.cached += class;
        self.free.entry(class).or_default().push(slice);
    }

    /// Frees every cached buffer back to the driver.
    fn release(&mut self) {
        self.free.clear();
        self.cached = 0;
    }

    fn stats(&self) -> MemoryStats {
        MemoryStats {
            lent: self.lent,
            peak: self.peak,
            cached: self.cached,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_to_512_bytes_then_2_mib() {
        assert_eq!(size_class(0), 512);
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class((2 << 20) + 1), 4 << 20);
        for bytes in [3, 4000, 700_000, 5_000_000] {
            assert!(size_class(bytes) >= bytes);
        }
    }

    #[test]
    fn without_a_driver_the_error_says_to_use_the_cpu() {
        // on a machine with a driver this checks the other branch: a device opens, or fails
        // with CUDA's own error name
        match Gpu::new(0) {
            Err(Error::NoDriver) => {
                assert!(!driver_present());
                let msg = Error::NoDriver.to_string();
                assert_eq!(msg, "no CUDA driver found; run on CPU with --device cpu");
            }
            Err(Error::Cuda { name, .. }) => assert!(name.starts_with("CUDA_ERROR"), "{name}"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(gpu) => assert!(gpu.compute_capability().unwrap().0 >= 5),
        }
    }
}
