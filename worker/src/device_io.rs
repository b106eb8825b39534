//! Tensors that stay on the execution device between ONNX Runtime runs (DESIGN.md §3, the
//! device-resident decoding of issue 14).
//!
//! A [`DeviceIo`] runs graphs through ONNX Runtime's IoBinding: inputs that are already device
//! values (a previous run's outputs) are bound as they are, host arrays are copied up once
//! when bound, and outputs are written either to device memory (kept for the next run) or to
//! host memory (page-locked on CUDA) when the host reads them. Selecting rows of device values
//! (the rows that go on decoding, each row's image) runs a small `Gather` graph built at load
//! time with ONNX Runtime's model editor, on the same device, so no tensor of the decoding
//! state crosses to the host: per decoder step only the token ids, positions and mask go up
//! and the logits come down.
//!
//! On the CPU provider "device" and "host" memory are the same and the same code runs; its
//! outputs equal the host-array path's exactly (a test in `worker/tests/device_io.rs` checks
//! greedy and sampled captions and ITM probabilities).

use ndarray::{Array, ArrayD, Dimension};
use ort::editor::{Graph, Model, Node, ONNX_DOMAIN, Opset};
use ort::memory::MemoryInfo;
use ort::operator::Attribute;
use ort::session::Session;
use ort::value::{
    DynValue, Outlet, Shape, SymbolicDimensions, Tensor, TensorElementType, ValueType,
};

use crate::device::Device;
use crate::engine_error::EngineError;
use crate::runtime::{OrtRuntime, SessionOptions, device_memory, host_memory};

/// ONNX opset of the gather graphs.
const GATHER_OPSET: u32 = 18;

/// Where a bound output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Device memory: the value feeds a later run.
    Device,
    /// Host memory: the host reads the value.
    Host,
}

/// A device, its memory kinds, and the small graphs that move decoding state on it: a row
/// gather (axis 0) for `count` float tensors of one rank at once and, for decoding, a position
/// gather (axis 2) and a row concatenation.
pub struct DeviceIo {
    device: Device,
    device_mem: MemoryInfo<'static>,
    host_mem: MemoryInfo<'static>,
    gather_rows: Session,
    gather_positions: Option<Session>,
    concat_rows: Option<Session>,
    count: usize,
}

impl std::fmt::Debug for DeviceIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIo")
            .field("device", &self.device)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl DeviceIo {
    /// A device IO for `options.device` whose gather graph selects rows of `count` float
    /// tensors of rank `rank` at once.
    pub fn new(
        rt: &OrtRuntime,
        options: &SessionOptions,
        count: usize,
        rank: usize,
    ) -> Result<Self, EngineError> {
        // Copies: one thread, no pool of its own competing with the model sessions' pools.
        let options = &SessionOptions {
            intra_threads: Some(1),
            ..*options
        };
        let gather_rows = rt.session_from_model(
            &format!("row gather x{count} (rank {rank})"),
            gather_model(count, rank, 0)?,
            options,
        )?;
        Ok(Self {
            device: options.device,
            device_mem: device_memory(options.device)?,
            host_mem: host_memory(options.device)?,
            gather_rows,
            gather_positions: None,
            concat_rows: None,
            count,
        })
    }

    /// A device IO for `count` KV-cache tensors `[rows, heads, positions, d]`: row gathers,
    /// position gathers and row concatenation (continuous batching).
    pub fn for_decoding(
        rt: &OrtRuntime,
        options: &SessionOptions,
        count: usize,
    ) -> Result<Self, EngineError> {
        let mut io = Self::new(rt, options, count, 4)?;
        let options = &SessionOptions {
            intra_threads: Some(1),
            ..*options
        };
        io.gather_positions = Some(rt.session_from_model(
            &format!("position gather x{count}"),
            gather_model(count, 4, 2)?,
            options,
        )?);
        io.concat_rows = Some(rt.session_from_model(
            &format!("row concat x{count}"),
            concat_model(count, 4)?,
            options,
        )?);
        Ok(io)
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs `session` with `inputs` bound (device values as they are, host values copied up)
    /// and `outputs` written where each says; returns the outputs in the order asked for.
    pub fn run(
        &self,
        session: &mut Session,
        inputs: &[(&str, &DynValue)],
        outputs: &[(&str, Place)],
    ) -> Result<Vec<DynValue>, EngineError> {
        run_bound(session, (&self.device_mem, &self.host_mem), inputs, outputs)
    }

    /// Rows `rows` (along the first axis) of each of `values`, as new device values. At most
    /// `count` values per gather run; more are done in several runs.
    pub fn select_rows(
        &mut self,
        values: &[DynValue],
        rows: &[usize],
    ) -> Result<Vec<DynValue>, EngineError> {
        self.select_rows_to(values, rows, Place::Device)
    }

    /// As [`DeviceIo::select_rows`], with the results written to `place` (host memory to read
    /// device values on the host).
    pub fn select_rows_to(
        &mut self,
        values: &[DynValue],
        rows: &[usize],
        place: Place,
    ) -> Result<Vec<DynValue>, EngineError> {
        let index = index_value(rows)?;
        let mems = (&self.device_mem, &self.host_mem);
        run_chunked(
            &mut self.gather_rows,
            mems,
            self.count,
            values,
            None,
            Some(&index),
            place,
        )
    }

    /// Positions `positions` (axis 2) of each KV-cache tensor of `values`.
    pub fn select_positions(
        &mut self,
        values: &[DynValue],
        positions: &[usize],
    ) -> Result<Vec<DynValue>, EngineError> {
        let index = index_value(positions)?;
        let mems = (&self.device_mem, &self.host_mem);
        let session = self
            .gather_positions
            .as_mut()
            .ok_or_else(|| EngineError::Graph("this device IO has no position gather".into()))?;
        run_chunked(
            session,
            mems,
            self.count,
            values,
            None,
            Some(&index),
            Place::Device,
        )
    }

    /// `values` with `more`'s rows appended (one pair of tensors at a time).
    pub fn concat_rows(
        &mut self,
        values: &[DynValue],
        more: &[DynValue],
    ) -> Result<Vec<DynValue>, EngineError> {
        let mems = (&self.device_mem, &self.host_mem);
        let session = self
            .concat_rows
            .as_mut()
            .ok_or_else(|| EngineError::Graph("this device IO has no row concatenation".into()))?;
        run_chunked(
            session,
            mems,
            self.count,
            values,
            Some(more),
            None,
            Place::Device,
        )
    }

    /// A host array as a value to bind (copied to the device by the binding).
    pub fn host_value<T, D>(array: Array<T, D>) -> Result<DynValue, EngineError>
    where
        T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
        D: Dimension + 'static,
    {
        Ok(Tensor::from_array(array)?.into_dyn())
    }
}

fn index_value(index: &[usize]) -> Result<DynValue, EngineError> {
    let index: Vec<i64> = index.iter().map(|&r| r as i64).collect();
    Ok(Tensor::from_array((vec![index.len()], index))?.into_dyn())
}

/// Runs a gather (`x_i`, `index` -> `y_i`) or concat (`x_i`, `z_i` -> `y_i`) graph of `count`
/// tensors over `values` in chunks of `count`.
fn run_chunked(
    session: &mut Session,
    mems: (&MemoryInfo<'static>, &MemoryInfo<'static>),
    count: usize,
    values: &[DynValue],
    second: Option<&[DynValue]>,
    index: Option<&DynValue>,
    place: Place,
) -> Result<Vec<DynValue>, EngineError> {
    if !values.len().is_multiple_of(count) || second.is_some_and(|s| s.len() != values.len()) {
        return Err(EngineError::Graph(format!(
            "a graph of {count} tensors given {} (and {:?})",
            values.len(),
            second.map(<[DynValue]>::len)
        )));
    }
    let names_x: Vec<String> = (0..count).map(|i| format!("x_{i}")).collect();
    let names_z: Vec<String> = (0..count).map(|i| format!("z_{i}")).collect();
    let names_y: Vec<String> = (0..count).map(|i| format!("y_{i}")).collect();
    let outputs: Vec<(&str, Place)> = names_y.iter().map(|n| (n.as_str(), place)).collect();
    let mut out = Vec::with_capacity(values.len());
    for (c, chunk) in values.chunks(count).enumerate() {
        let mut inputs: Vec<(&str, &DynValue)> = Vec::with_capacity(2 * count + 1);
        if let Some(index) = index {
            inputs.push(("index", index));
        }
        inputs.extend(names_x.iter().map(String::as_str).zip(chunk));
        if let Some(second) = second {
            inputs.extend(
                names_z
                    .iter()
                    .map(String::as_str)
                    .zip(&second[c * count..(c + 1) * count]),
            );
        }
        out.extend(run_bound(session, mems, &inputs, &outputs)?);
    }
    Ok(out)
}

fn run_bound(
    session: &mut Session,
    (device_mem, host_mem): (&MemoryInfo<'static>, &MemoryInfo<'static>),
    inputs: &[(&str, &DynValue)],
    outputs: &[(&str, Place)],
) -> Result<Vec<DynValue>, EngineError> {
    let mut binding = session.create_binding()?;
    for (name, value) in inputs {
        binding.bind_input(*name, *value)?;
    }
    for (name, place) in outputs {
        let mem = match place {
            Place::Device => device_mem,
            Place::Host => host_mem,
        };
        binding.bind_output_to_device(*name, mem)?;
    }
    let mut results = session.run_binding(&binding)?;
    outputs
        .iter()
        .map(|(name, _)| {
            results
                .remove(*name)
                .ok_or_else(|| EngineError::Graph(format!("no output '{name}'")))
        })
        .collect()
}

/// Copies a value the host can read into an owned array (logits, ITM outputs).
pub fn to_host_array(value: &DynValue) -> Result<ArrayD<f32>, EngineError> {
    Ok(value.try_extract_array::<f32>()?.to_owned())
}

fn float_outlet(name: String, rank: usize) -> Outlet {
    Outlet::new(
        name,
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape: Shape::new(vec![-1i64; rank]),
            dimension_symbols: SymbolicDimensions::empty(rank),
        },
    )
}

/// `y_i = Concat(x_i, z_i, axis=0)` for `count` float tensors of rank `rank`.
fn concat_model(count: usize, rank: usize) -> Result<Model, EngineError> {
    let mut graph = Graph::new()?;
    let mut inputs: Vec<Outlet> = (0..count)
        .map(|i| float_outlet(format!("x_{i}"), rank))
        .collect();
    inputs.extend((0..count).map(|i| float_outlet(format!("z_{i}"), rank)));
    graph.set_inputs(inputs)?;
    graph.set_outputs((0..count).map(|i| float_outlet(format!("y_{i}"), rank)))?;
    for i in 0..count {
        graph.add_node(Node::new(
            "Concat",
            ONNX_DOMAIN,
            format!("concat_{i}"),
            [format!("x_{i}"), format!("z_{i}")],
            [format!("y_{i}")],
            [Attribute::new("axis", 0i64)?],
        )?)?;
    }
    let mut model = Model::new([Opset::new(ONNX_DOMAIN, GATHER_OPSET)?])?;
    model.set_graph(graph)?;
    Ok(model)
}

/// `y_i = Gather(x_i, index, axis)` for `count` float tensors of rank `rank` with every
/// dimension symbolic.
fn gather_model(count: usize, rank: usize, axis: i64) -> Result<Model, EngineError> {
    let float = |name: String| {
        Outlet::new(
            name,
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape: Shape::new(vec![-1i64; rank]),
                dimension_symbols: SymbolicDimensions::empty(rank),
            },
        )
    };
    let mut graph = Graph::new()?;
    let mut inputs = vec![Outlet::new(
        "index",
        ValueType::Tensor {
            ty: TensorElementType::Int64,
            shape: Shape::new([-1i64]),
            dimension_symbols: SymbolicDimensions::empty(1),
        },
    )];
    inputs.extend((0..count).map(|i| float(format!("x_{i}"))));
    graph.set_inputs(inputs)?;
    graph.set_outputs((0..count).map(|i| float(format!("y_{i}"))))?;
    for i in 0..count {
        graph.add_node(Node::new(
            "Gather",
            ONNX_DOMAIN,
            format!("gather_{i}"),
            [format!("x_{i}"), "index".to_string()],
            [format!("y_{i}")],
            [Attribute::new("axis", axis)?],
        )?)?;
    }
    let mut model = Model::new([Opset::new(ONNX_DOMAIN, GATHER_OPSET)?])?;
    model.set_graph(graph)?;
    Ok(model)
}
