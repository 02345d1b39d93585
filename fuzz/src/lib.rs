//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! * [`host`]: the wasm host every host target uses, with small fuel and
//!   memory limits so that a hostile module or command costs milliseconds;
//! * [`abi_shape`]: a module that has exactly Dorado's ABI exports, used as
//!   wasm-smith's export template so generated modules get past the export
//!   checks and reach instantiation and the ABI calls;
//! * [`GuestCommand`]: structured JSON commands for the example guests (the
//!   guests' own code runs as JIT-compiled wasm that libFuzzer cannot see, so
//!   coverage alone would rarely find their command syntax).

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use dorado::host::{Host, HostConfig};
use wasm_encoder::{
    CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, MemorySection,
    MemoryType, TypeSection, ValType,
};

/// Limits of the fuzzing host: about 10⁶ wasm operations per command, 32 MiB
/// of guest memory, and a checkpoint every 4 KiB of logged commands so that
/// rollback by checkpoint *and* by log replay both run often.
pub const FUZZ_CONFIG: HostConfig = HostConfig {
    fuel_per_command: 2_000_000,
    fuel_per_snapshot: 20_000_000,
    memory_limit: 32 << 20,
    checkpoint_log_bytes: 4096,
};

/// The process-wide host with [`FUZZ_CONFIG`].
pub fn host() -> &'static Host {
    static HOST: LazyLock<Host> =
        LazyLock::new(|| Host::new(FUZZ_CONFIG).expect("wasm engine configuration"));
    &HOST
}

/// A module exporting exactly the Dorado ABI, the optional `dorado_migrate`
/// included (bodies are `unreachable`).
pub fn abi_shape() -> Vec<u8> {
    const I32: ValType = ValType::I32;
    const I64: ValType = ValType::I64;
    let funcs: [(&str, &[ValType], &[ValType]); 8] = [
        ("dorado_abi_version", &[], &[I32]),
        ("dorado_alloc", &[I32], &[I32]),
        ("dorado_apply", &[I32, I32], &[I64]),
        ("dorado_query", &[I32, I32], &[I64]),
        ("dorado_snapshot", &[], &[I64]),
        ("dorado_restore", &[I32, I32], &[I32]),
        ("dorado_last_panic", &[], &[I64]),
        ("dorado_migrate", &[I32, I32], &[I32]),
    ];
    let mut types = TypeSection::new();
    let mut functions = FunctionSection::new();
    let mut exports = ExportSection::new();
    let mut code = CodeSection::new();
    for (i, (name, params, results)) in funcs.iter().enumerate() {
        let i = i as u32;
        types
            .ty()
            .function(params.iter().copied(), results.iter().copied());
        functions.function(i);
        exports.export(name, ExportKind::Func, i);
        let mut body = Function::new([]);
        body.instruction(&Instruction::Unreachable);
        body.instruction(&Instruction::End);
        code.function(&body);
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    exports.export("memory", ExportKind::Memory, 0);
    let mut module = wasm_encoder::Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&memories)
        .section(&exports)
        .section(&code);
    module.finish()
}

/// Every `op` any example guest understands, plus one none does.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Op {
    /// kv
    Put,
    /// kv, counter
    Get,
    /// kv
    Delete,
    /// kv
    Cas,
    /// kv query
    Len,
    /// counter
    Add,
    /// bank
    Open,
    /// bank
    Transfer,
    /// bank query
    Total,
    /// bank query
    Balance,
    /// faulty
    Set,
    /// faulty
    Panic,
    /// faulty
    Loop,
    /// faulty
    Alloc,
    /// faulty
    Recurse,
    /// nobody
    Unknown,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Delete => "delete",
            Op::Cas => "cas",
            Op::Len => "len",
            Op::Add => "add",
            Op::Open => "open",
            Op::Transfer => "transfer",
            Op::Total => "total",
            Op::Balance => "balance",
            Op::Set => "set",
            Op::Panic => "panic",
            Op::Loop => "loop",
            Op::Alloc => "alloc",
            Op::Recurse => "recurse",
            Op::Unknown => "nope",
        }
    }
}

/// A small JSON value: keys and accounts come from a tiny alphabet so that
/// commands hit the same entries again.
#[derive(Debug, Clone, Arbitrary)]
pub enum Small {
    /// `null`
    Null,
    /// An integer (also negative and huge ones).
    Int(i64),
    /// An unsigned integer near `u64::MAX`, for overflow checks.
    Big(u64),
    /// A one-letter string.
    Name(u8),
    /// A boolean.
    Bool(bool),
}

impl Small {
    fn json(&self) -> serde_json::Value {
        match self {
            Small::Null => serde_json::Value::Null,
            Small::Int(n) => (*n).into(),
            Small::Big(n) => (u64::MAX - (*n % 16)).into(),
            Small::Name(c) => char::from(b'a' + c % 4).to_string().into(),
            Small::Bool(b) => (*b).into(),
        }
    }
}

/// One structured command or query for the example guests.
#[derive(Debug, Clone, Arbitrary)]
pub struct GuestCommand {
    /// The `op` field.
    pub op: Op,
    /// Optional fields, each set from its own value when present.
    pub fields: Vec<(Field, Small)>,
}

/// Field names the example guests read.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Field {
    /// kv
    Key,
    /// kv, faulty
    Value,
    /// kv cas
    Expected,
    /// counter
    N,
    /// bank
    Account,
    /// bank
    Balance,
    /// bank
    From,
    /// bank
    To,
    /// bank
    Amount,
    /// faulty: allocation size
    Mb,
    /// faulty: value stored before the fault
    Set,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Field::Key => "key",
            Field::Value => "value",
            Field::Expected => "expected",
            Field::N => "n",
            Field::Account => "account",
            Field::Balance => "balance",
            Field::From => "from",
            Field::To => "to",
            Field::Amount => "amount",
            Field::Mb => "mb",
            Field::Set => "set",
        }
    }
}

impl GuestCommand {
    /// The command as JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut map = serde_json::Map::new();
        map.insert("op".into(), self.op.as_str().into());
        for (field, value) in &self.fields {
            let v = match (field, value) {
                // Keep allocations below and around the 32 MiB cap, not 4 GiB.
                (Field::Mb, Small::Int(n)) => (n.rem_euclid(48)).into(),
                _ => value.json(),
            };
            map.insert(field.as_str().into(), v);
        }
        serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default()
    }
}

/// The webhook configuration the golden tests use (`webhook/tests/common`).
pub fn webhook_config() -> &'static dorado_webhook::MutationConfig {
    static CONFIG: LazyLock<dorado_webhook::MutationConfig> = LazyLock::new(|| {
        dorado_webhook::MutationConfig::new(
            "dorado/dorado:0.1.0",
            vec![
                "http://etcd-0.etcd.dorado-system.svc:2379".into(),
                "http://etcd-1.etcd.dorado-system.svc:2379".into(),
                "http://etcd-2.etcd.dorado-system.svc:2379".into(),
            ],
        )
    });
    &CONFIG
}

/// What [`check_patch`] reads of a pod (before and after the patch), as
/// typed views of the raw JSON (the containers themselves stay raw: they are
/// compared whole).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct PodLists {
    spec: Option<SpecLists>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct SpecLists {
    containers: Option<Vec<serde_json::Value>>,
    /// `Some` when present, even as `null`.
    #[serde(deserialize_with = "dorado_webhook::view::present")]
    init_containers: Option<serde_json::Value>,
    #[serde(deserialize_with = "dorado_webhook::view::present")]
    ephemeral_containers: Option<serde_json::Value>,
}

/// Checks what must hold for every patch the webhook produces for `pod`, and
/// returns the patched pod:
/// * the patch applies cleanly (every path exists or has its parent added);
/// * nothing the webhook does not own disappears: every top-level field of
///   the pod survives, `initContainers` and `ephemeralContainers` are
///   untouched, the number of containers is unchanged and at most one
///   container (the target) differs;
/// * the result is idempotent: mutating the patched pod again is a skip
///   (`already mutated`), as `reinvocationPolicy: IfNeeded` requires.
pub fn check_patch(pod: &serde_json::Value, patch: &json_patch::Patch) -> serde_json::Value {
    use dorado_webhook::{Skip, Verdict, mutate_pod};
    use serde::Deserialize as _;
    use serde::de::IgnoredAny;
    use std::collections::{BTreeMap, BTreeSet};
    let mut patched = pod.clone();
    if let Err(e) = json_patch::patch(&mut patched, patch) {
        panic!("the webhook's patch does not apply: {e}\npatch: {patch:?}");
    }
    // The top-level field names, when the pod is an object.
    let fields = |v: &serde_json::Value| {
        BTreeMap::<String, IgnoredAny>::deserialize(v)
            .ok()
            .map(|m| m.into_keys().collect::<BTreeSet<_>>())
    };
    if let Some(before) = fields(pod) {
        let after = fields(&patched).unwrap_or_default();
        let dropped: Vec<&String> = before.difference(&after).collect();
        assert!(
            dropped.is_empty(),
            "patch dropped top-level fields {dropped:?}"
        );
    }
    let lists = |v: &serde_json::Value| {
        PodLists::deserialize(v)
            .unwrap_or_else(|e| panic!("a mutated pod has a spec of the wrong shape: {e}"))
            .spec
            .unwrap_or_default()
    };
    let (before, after) = (lists(pod), lists(&patched));
    assert_eq!(
        before.init_containers, after.init_containers,
        "initContainers changed"
    );
    assert_eq!(
        before.ephemeral_containers, after.ephemeral_containers,
        "ephemeralContainers changed"
    );
    let (Some(before), Some(after)) = (before.containers, after.containers) else {
        panic!("a mutated pod must have spec.containers before and after");
    };
    assert_eq!(before.len(), after.len(), "containers added or removed");
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(
        changed <= 1,
        "{changed} containers changed; only the target may"
    );
    let again = mutate_pod(&patched, webhook_config());
    assert_eq!(
        again.verdict,
        Verdict::Skip(Skip::AlreadyMutated),
        "mutating the mutated pod again is not a skip"
    );
    patched
}
