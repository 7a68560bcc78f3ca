//! The key/value cache of a batch, and the one operation continuous batching needs on it:
//! regathering rows (to drop finished sequences, or to merge two batches) into a new cache.
//!
//! Every sequence's entries are right-aligned: row `i` of a cache of length `len` holds its
//! sequence's `k` cached positions at `len - k .. len`, with zeros (masked out by the attention
//! mask) before them. That is what left padding gives at prefill, and what appending one position
//! per decode step keeps.

use half::f16;
use ort::{
    memory::AllocationDevice,
    value::{DynTensor, PrimitiveTensorElementType, Tensor},
};

use super::spec::{Device, KvDtype};
use crate::error::{Error, Result};

/// The past key/values of a batch: `2 * layers` tensors (layer 0 key, layer 0 value, layer 1 key,
/// ...), each `[batch, heads, len, head_dim]`, on the model's device.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) tensors: Vec<DynTensor>,
    pub batch: usize,
    pub len: usize,
}

/// Row `row` of source cache `source`, whose last `len` positions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub source: usize,
    pub row: usize,
    pub len: usize,
}

/// What regathering needs to know about the model.
#[derive(Debug, Clone, Copy)]
pub struct KvLayout {
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub dtype: KvDtype,
    pub device: Device,
}

impl KvCache {
    /// A cache of `batch` rows with no positions yet (what the first step passes).
    pub fn empty(layout: &KvLayout, batch: usize) -> Result<KvCache> {
        Self::regather(
            &[],
            &vec![
                Pick {
                    source: 0,
                    row: 0,
                    len: 0
                };
                batch
            ],
            0,
            layout,
        )
    }

    /// A new cache whose row `i` holds the last `picks[i].len` positions of the picked row,
    /// right-aligned in `len` positions. `len` must be at least every pick's `len`.
    pub fn regather(
        sources: &[&KvCache],
        picks: &[Pick],
        len: usize,
        layout: &KvLayout,
    ) -> Result<KvCache> {
        let mut tensors = Vec::with_capacity(2 * layout.layers);
        for t in 0..2 * layout.layers {
            let parts: Vec<&DynTensor> = sources.iter().map(|s| &s.tensors[t]).collect();
            let host = match layout.dtype {
                KvDtype::F32 => gather::<f32>(&parts, sources, picks, len, layout)?,
                KvDtype::F16 => gather::<f16>(&parts, sources, picks, len, layout)?,
            };
            tensors.push(match layout.device {
                Device::Cpu => host,
                Device::Cuda(id) => host
                    .to(AllocationDevice::CUDA, id)
                    .map_err(Error::ort("copy the kv cache to the device"))?,
            });
        }
        Ok(KvCache {
            tensors,
            batch: picks.len(),
            len,
        })
    }
}

fn gather<T>(
    parts: &[&DynTensor],
    sources: &[&KvCache],
    picks: &[Pick],
    len: usize,
    layout: &KvLayout,
) -> Result<DynTensor>
where
    T: PrimitiveTensorElementType + Copy + Default + std::fmt::Debug + 'static,
{
    let (heads, dim) = (layout.heads, layout.head_dim);
    // Device tensors are read through a host copy.
    let host: Vec<Option<DynTensor>> = parts
        .iter()
        .map(|t| {
            if t.memory_info().allocation_device() == AllocationDevice::CPU {
                Ok(None)
            } else {
                t.to(AllocationDevice::CPU, 0)
                    .map(Some)
                    .map_err(Error::ort("copy the kv cache to the host"))
            }
        })
        .collect::<Result<_>>()?;
    let mut views = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let tensor = host[i].as_ref().unwrap_or(part);
        let (_, data) = tensor
            .try_extract_tensor::<T>()
            .map_err(Error::ort("read the kv cache"))?;
        views.push((data, sources[i].len));
    }
    let mut out = vec![T::default(); picks.len() * heads * len * dim];
    for (i, pick) in picks.iter().enumerate() {
        if pick.len == 0 {
            continue;
        }
        let (data, src_len) = views[pick.source];
        debug_assert!(pick.len <= src_len && pick.len <= len);
        for h in 0..heads {
            let src = ((pick.row * heads + h) * src_len + (src_len - pick.len)) * dim;
            let dst = ((i * heads + h) * len + (len - pick.len)) * dim;
            out[dst..dst + pick.len * dim].copy_from_slice(&data[src..src + pick.len * dim]);
        }
    }
    let shape = [picks.len(), heads, len, dim];
    Ok(Tensor::from_array((shape, out))
        .map_err(Error::ort("create a kv tensor"))?
        .upcast())
}
