//! A small pickle virtual machine for what `torch.save` (protocol 2) and PyTorch Distributed
//! Checkpoint's `.metadata` (protocol 4) contain: no Python runs, so classes stay symbolic. A call
//! (`REDUCE`, `NEWOBJ`) becomes an [`Object`] holding its callable and arguments, `BUILD` stores its
//! state there; the few calls whose meaning matters are resolved as they are made:
//! `collections.OrderedDict()` is a dict, `torch.Size(...)` a tuple, `torch._utils._rebuild_parameter`
//! its tensor, and `torch._utils._rebuild_tensor_v2` a [`TensorRef`] to a storage named by the
//! persistent id `('storage', torch.<Type>Storage, key, location, numel)`.

use std::cell::RefCell;
use std::rc::Rc;

/// A Python value, as far as the converter needs to see it.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (little-endian two's complement bytes, as `LONG1` stores it).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// `module.name`, as `GLOBAL` / `STACK_GLOBAL` name it.
    Global(String, String),
    Object(Rc<RefCell<Object>>),
    Tensor(TensorRef),
    /// A persistent id that is not a torch storage.
    PersId(Box<Value>),
}

/// The result of calling a class or function the VM does not model.
#[derive(Debug, Clone)]
pub struct Object {
    pub callable: Value,
    pub args: Vec<Value>,
    pub state: Option<Value>,
    /// Items a `SETITEMS` / `APPENDS` added to a non-dict, non-list object.
    pub items: Vec<(Value, Value)>,
}

/// A tensor view into a storage of the archive: `torch._utils._rebuild_tensor_v2` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage's name in the archive (`<stem>/data/<key>`).
    pub key: String,
    pub dtype: Dtype,
    /// Offset in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
    /// Elements in the storage.
    pub numel: usize,
}

/// Element types of torch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// The safetensors header name.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    /// The name HF configs use (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F64 => "float64",
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        }
    }

    /// From a legacy storage class name (`FloatStorage`) or a dtype name (`float32`, `torch.bfloat16`).
    pub fn from_torch_name(name: &str) -> Option<Dtype> {
        Some(match name.trim_start_matches("torch.") {
            "DoubleStorage" | "float64" | "double" => Dtype::F64,
            "FloatStorage" | "float32" | "float" => Dtype::F32,
            "HalfStorage" | "float16" | "half" => Dtype::F16,
            "BFloat16Storage" | "bfloat16" => Dtype::BF16,
            "LongStorage" | "int64" | "long" => Dtype::I64,
            "IntStorage" | "int32" | "int" => Dtype::I32,
            "ShortStorage" | "int16" | "short" => Dtype::I16,
            "CharStorage" | "int8" => Dtype::I8,
            "ByteStorage" | "UntypedStorage" | "uint8" => Dtype::U8,
            "BoolStorage" | "bool" => Dtype::Bool,
            _ => return None,
        })
    }
}

impl Value {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// Tuple or list items.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(v) => Some(v.clone()),
            Value::List(v) => Some(v.borrow().clone()),
            _ => None,
        }
    }

    /// The entry under a string key: a dict's item, or an object's attribute (its `BUILD` state,
    /// a dict or the `(dict, slots)` pair of classes with `__slots__`).
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d.borrow().iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone()),
            Value::Object(o) => {
                let o = o.borrow();
                match &o.state {
                    Some(s @ Value::Dict(_)) => s.get(key),
                    Some(Value::Tuple(t)) => t.iter().find_map(|s| s.get(key)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// A dict's entries (an object's `SETITEMS` items too).
    pub fn entries(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            Value::Object(o) => Some(o.borrow().items.clone()),
            _ => None,
        }
    }

    /// The class or function that made an object (`module.name`).
    pub fn class_name(&self) -> Option<String> {
        match self {
            Value::Object(o) => match &o.borrow().callable {
                Value::Global(m, n) => Some(format!("{m}.{n}")),
                _ => None,
            },
            _ => None,
        }
    }
}

fn new_dict() -> Value {
    Value::Dict(Rc::new(RefCell::new(Vec::new())))
}

fn new_list(v: Vec<Value>) -> Value {
    Value::List(Rc::new(RefCell::new(v)))
}

/// How deeply values may nest (Python's own recursion limit): deeper pickles are refused, as
/// dropping or walking them would overflow the stack. Real checkpoints nest a few levels.
pub const MAX_DEPTH: u32 = 1000;

/// A stack entry: a value with its nesting depth (1 for a scalar).
enum Slot {
    Mark,
    V(Value, u32),
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: std::collections::HashMap<u64, (Value, u32)>,
    /// Depth of each shared container (list, dict, object; by address), which items added
    /// later deepen, and whether it is already inside another value (it may then not deepen:
    /// the depths of those holding it would be stale).
    containers: std::collections::HashMap<usize, (u32, bool)>,
}

/// Unpickle `data`; errors say which opcode at which byte went wrong.
pub fn loads(data: &[u8]) -> Result<Value, String> {
    let mut vm = Vm { data, pos: 0, stack: Vec::new(), memo: Default::default(), containers: Default::default() };
    vm.run()
}

/// The address of a shared container, its identity for `Vm::containers`.
fn container_id(v: &Value) -> Option<usize> {
    match v {
        Value::List(l) => Some(Rc::as_ptr(l) as *const u8 as usize),
        Value::Dict(d) => Some(Rc::as_ptr(d) as *const u8 as usize),
        Value::Object(o) => Some(Rc::as_ptr(o) as *const u8 as usize),
        _ => None,
    }
}

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len()).ok_or_else(|| {
            format!("pickle truncated at byte {} (needs {n} more bytes)", self.pos)
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<&'a [u8], String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|b| *b == b'\n').ok_or("pickle: unterminated text line")?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }
    fn utf8(b: &[u8]) -> Result<String, String> {
        String::from_utf8(b.to_vec()).map_err(|_| "pickle: invalid UTF-8 string".to_string())
    }

    /// Push a scalar (depth 1).
    fn push(&mut self, v: Value) {
        self.stack.push(Slot::V(v, 1));
    }
    /// Push a value made of parts of `parts` depths (the containers among them: `nested`): one
    /// level deeper than the deepest.
    fn push_made_of(&mut self, v: Value, parts: &[u32], nested: Vec<usize>) -> Result<(), String> {
        let depth = parts.iter().max().copied().unwrap_or(0) + 1;
        if depth > MAX_DEPTH {
            return Err(format!("pickle: values nest deeper than {MAX_DEPTH} levels at byte {}; this is no checkpoint", self.pos));
        }
        let id = container_id(&v);
        let fresh = id.is_some_and(|id| !nested.contains(&id));
        self.nest(nested);
        match id {
            // A new container (its address may be a freed one's: its record starts over).
            Some(id) if fresh => {
                self.containers.insert(id, (depth, false));
            }
            Some(id) => {
                let entry = self.containers.entry(id).or_insert((depth, true));
                entry.0 = entry.0.max(depth);
            }
            None => {}
        }
        self.stack.push(Slot::V(v, depth));
        Ok(())
    }
    /// The depth of a value as it is now (a shared container may have deepened since it was pushed).
    fn depth_of(&self, v: &Value, pushed: u32) -> u32 {
        container_id(v).and_then(|id| self.containers.get(&id)).map_or(pushed, |e| e.0.max(pushed))
    }
    /// Mark these containers as held inside another value.
    fn nest(&mut self, ids: Vec<usize>) {
        for id in ids {
            self.containers.entry(id).or_insert((1, true)).1 = true;
        }
    }
    /// Add items of `depths` to the container `target`: it deepens to one level past the deepest
    /// item; the items are now held by it.
    fn deepen(&mut self, target: &Value, items: &[(Value, u32)]) -> Result<(), String> {
        let Some(id) = container_id(target) else { return Ok(()) };
        let deepest = items.iter().map(|(v, d)| self.depth_of(v, *d)).max().unwrap_or(0);
        self.nest(items.iter().filter_map(|(v, _)| container_id(v)).collect());
        let (depth, nested) = self.containers.get(&id).copied().unwrap_or((1, false));
        if deepest + 1 > depth {
            if deepest + 1 > MAX_DEPTH {
                return Err(format!("pickle: values nest deeper than {MAX_DEPTH} levels at byte {}; this is no checkpoint", self.pos));
            }
            if nested {
                return Err(format!(
                    "pickle: a container grows deeper after it was put inside another (or inside itself) at byte {}; not supported",
                    self.pos
                ));
            }
            self.containers.insert(id, (deepest + 1, nested));
        }
        Ok(())
    }
    fn pop_slot(&mut self) -> Result<(Value, u32), String> {
        match self.stack.pop() {
            Some(Slot::V(v, d)) => {
                let d = self.depth_of(&v, d);
                Ok((v, d))
            }
            Some(Slot::Mark) => Err("pickle: unexpected MARK on the stack".into()),
            None => Err("pickle: stack underflow".into()),
        }
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.pop_slot().map(|(v, _)| v)
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        match self.stack.last_mut() {
            Some(Slot::V(v, _)) => Ok(v),
            _ => Err("pickle: stack underflow".into()),
        }
    }
    fn pop_mark(&mut self) -> Result<Vec<(Value, u32)>, String> {
        let at = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)).ok_or("pickle: no MARK")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|s| match s {
                Slot::V(v, d) => {
                    let d = self.depth_of(&v, d);
                    (v, d)
                }
                Slot::Mark => unreachable!(),
            })
            .collect())
    }
    fn memo_get(&self, i: u64) -> Result<(Value, u32), String> {
        self.memo.get(&i).cloned().ok_or_else(|| format!("pickle: memo {i} is not set"))
    }
    fn memo_put(&mut self, i: u64) -> Result<(), String> {
        let v = match self.stack.last() {
            Some(Slot::V(v, d)) => (v.clone(), *d),
            _ => return Err("pickle: PUT with an empty stack".into()),
        };
        self.memo.insert(i, v);
        Ok(())
    }
    /// Push a value with its depth as recorded (DUP, GET).
    fn push_slot(&mut self, (v, d): (Value, u32)) {
        self.stack.push(Slot::V(v, d));
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => match self.stack.last() {
                    Some(Slot::V(v, d)) => {
                        let slot = (v.clone(), *d);
                        self.push_slot(slot)
                    }
                    _ => return Err("pickle: DUP with an empty stack".into()),
                },
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Value::Int(v))
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push(Value::Int(v))
                }
                b'I' => {
                    let l = Self::utf8(self.line()?)?;
                    let v = match l.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| format!("pickle: bad INT {s:?}"))?),
                    };
                    self.push(v)
                }
                b'L' => {
                    let l = Self::utf8(self.line()?)?;
                    let v = l.trim_end_matches('L').parse().map_err(|_| format!("pickle: bad LONG {l:?}"))?;
                    self.push(Value::Int(v))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        Value::Int(0)
                    } else if n <= 8 {
                        let neg = b[n - 1] & 0x80 != 0;
                        let mut buf = [if neg { 0xff } else { 0 }; 8];
                        buf[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(buf))
                    } else {
                        Value::BigInt(b.to_vec())
                    };
                    self.push(v)
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v))
                }
                b'F' => {
                    let l = Self::utf8(self.line()?)?;
                    self.push(Value::Float(l.parse().map_err(|_| format!("pickle: bad FLOAT {l:?}"))?))
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let s = Self::utf8(self.take(n)?)?;
                    self.push(Value::Str(s))
                }
                b'V' => {
                    let s = Self::utf8(self.line()?)?;
                    self.push(Value::Str(s))
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'T' | b'B' => self.u32()? as usize,
                        b'U' | b'C' => self.u8()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    // Python 2 strings (BINSTRING) read as text, as torch.load's default encoding does.
                    let v = if op == b'T' || op == b'U' {
                        Value::Str(b.iter().map(|c| *c as char).collect())
                    } else {
                        Value::Bytes(b)
                    };
                    self.push(v)
                }
                b']' | 0x8f => self.push_made_of(new_list(Vec::new()), &[], Vec::new())?, // EMPTY_SET: a list is enough here
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    let (values, depths, ids) = split(items);
                    self.push_made_of(new_list(values), &depths, ids)?
                }
                b'a' => {
                    let v = self.pop_slot()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b')' => self.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    let (values, depths, ids) = split(items);
                    self.push_made_of(Value::Tuple(values), &depths, ids)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle: stack underflow".into());
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop_slot()?);
                    }
                    items.reverse();
                    let (values, depths, ids) = split(items);
                    self.push_made_of(Value::Tuple(values), &depths, ids)?
                }
                b'}' => self.push_made_of(new_dict(), &[], Vec::new())?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let depths: Vec<u32> = items.iter().map(|i| i.1).collect();
                    let d = new_dict();
                    self.set_items(&d, items)?;
                    self.push_made_of(d, &depths, Vec::new())?
                }
                b's' => {
                    let v = self.pop_slot()?;
                    let k = self.pop_slot()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, items)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'c' => {
                    let m = Self::utf8(self.line()?)?;
                    let n = Self::utf8(self.line()?)?;
                    self.push(Value::Global(m, n))
                }
                0x93 => {
                    let n = self.pop()?;
                    let m = self.pop()?;
                    match (m, n) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n)),
                        _ => return Err(format!("pickle: STACK_GLOBAL without strings at byte {at}")),
                    }
                }
                b'R' | 0x81 => {
                    let (args, args_depth) = self.pop_slot()?;
                    let (f, f_depth) = self.pop_slot()?;
                    let what = if op == b'R' { "REDUCE" } else { "NEWOBJ" };
                    let args = args.items().ok_or_else(|| format!("pickle: {what} arguments are not a tuple at byte {at}"))?;
                    let ids = args.iter().filter_map(container_id).collect();
                    let v = call(f, args)?;
                    self.push_made_of(v, &[args_depth, f_depth], ids)?
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let (args, args_depth) = self.pop_slot()?;
                    let (cls, cls_depth) = self.pop_slot()?;
                    let args = args.items().unwrap_or_default();
                    let ids = args.iter().filter_map(container_id).collect();
                    let v = call(cls, args)?;
                    self.push_made_of(v, &[args_depth, cls_depth], ids)?
                }
                b'b' => {
                    let (state, depth) = self.pop_slot()?;
                    let target = self.top()?.clone();
                    self.deepen(&target, &[(state.clone(), depth)])?;
                    match self.top()? {
                        Value::Object(o) => o.borrow_mut().state = Some(state),
                        // A dict subclass's attributes (OrderedDict's `_metadata` of a state dict) are not items.
                        Value::Dict(_) => {}
                        // Tensors carry no state the converter needs (e.g. parameter flags).
                        Value::Tensor(_) => {}
                        other => return Err(format!("pickle: BUILD on {other:?} at byte {at}")),
                    }
                }
                b'Q' => {
                    let (pid, depth) = self.pop_slot()?;
                    let ids = container_id(&pid).into_iter().collect();
                    let v = persistent(pid)?;
                    self.push_made_of(v, &[depth], ids)?
                }
                b'P' => {
                    let pid = Self::utf8(self.line()?)?;
                    self.push_made_of(Value::PersId(Box::new(Value::Str(pid))), &[1], Vec::new())?
                }
                b'p' => {
                    let i: u64 = Self::utf8(self.line()?)?.parse().map_err(|_| "pickle: bad PUT")?;
                    self.memo_put(i)?
                }
                b'q' => {
                    let i = self.u8()? as u64;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.u32()? as u64;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?
                }
                b'g' => {
                    let i: u64 = Self::utf8(self.line()?)?.parse().map_err(|_| "pickle: bad GET")?;
                    let v = self.memo_get(i)?;
                    self.push_slot(v)
                }
                b'h' => {
                    let i = self.u8()? as u64;
                    let v = self.memo_get(i)?;
                    self.push_slot(v)
                }
                b'j' => {
                    let i = self.u32()? as u64;
                    let v = self.memo_get(i)?;
                    self.push_slot(v)
                }
                other => return Err(format!("pickle: unsupported opcode 0x{other:02x} at byte {at}")),
            }
        }
    }

    fn append(&mut self, items: Vec<(Value, u32)>) -> Result<(), String> {
        let target = self.top()?.clone();
        self.deepen(&target, &items)?;
        let items = items.into_iter().map(|(v, _)| v);
        match &target {
            Value::List(l) => l.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().items.extend(items.map(|v| (Value::None, v))),
            other => return Err(format!("pickle: APPEND to {other:?}")),
        }
        Ok(())
    }

    fn set_items(&mut self, target: &Value, items: Vec<(Value, u32)>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("pickle: odd number of dict items".into());
        }
        self.deepen(target, &items)?;
        let mut it = items.into_iter().map(|(v, _)| v);
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        match target {
            Value::Dict(d) => d.borrow_mut().extend(pairs),
            Value::Object(o) => o.borrow_mut().items.extend(pairs),
            other => return Err(format!("pickle: SETITEM on {other:?}")),
        }
        Ok(())
    }
}

/// Items with their depths, as the values, their depths and the containers among them.
fn split(items: Vec<(Value, u32)>) -> (Vec<Value>, Vec<u32>, Vec<usize>) {
    let ids = items.iter().filter_map(|(v, _)| container_id(v)).collect();
    let (values, depths) = items.into_iter().unzip();
    (values, depths, ids)
}

fn global_name(v: &Value) -> Option<(&str, &str)> {
    match v {
        Value::Global(m, n) => Some((m, n)),
        _ => None,
    }
}

/// Resolve a call: the torch and collections callables whose results the converter reads.
fn call(f: Value, args: Vec<Value>) -> Result<Value, String> {
    match global_name(&f) {
        Some(("collections", "OrderedDict")) | Some(("builtins", "dict")) if args.is_empty() => Ok(new_dict()),
        Some(("torch", "Size")) => Ok(Value::Tuple(args.into_iter().next().and_then(|a| a.items()).unwrap_or_default())),
        Some(("torch._utils", "_rebuild_parameter")) | Some(("torch._utils", "_rebuild_parameter_with_state")) => {
            args.into_iter().next().ok_or_else(|| "pickle: _rebuild_parameter without data".to_string())
        }
        Some(("torch._utils", "_rebuild_tensor_v2")) | Some(("torch._utils", "_rebuild_tensor")) => rebuild_tensor(args, None),
        // v3 names the dtype itself (args[6]), for storages saved untyped.
        Some(("torch._utils", "_rebuild_tensor_v3")) => {
            let dtype = match args.get(6) {
                Some(Value::Global(_, n)) => Some(Dtype::from_torch_name(n).ok_or_else(|| format!("unsupported dtype torch.{n}"))?),
                _ => None,
            };
            rebuild_tensor(args, dtype)
        }
        // A tensor subclass: (rebuild function, subclass, its arguments, state); the plain tensor will do.
        Some(("torch._tensor", "_rebuild_from_type_v2")) => {
            let mut it = args.into_iter();
            let (f, _, a) = (it.next(), it.next(), it.next());
            match (f, a.and_then(|a| a.items())) {
                (Some(f), Some(a)) => call(f, a),
                _ => Err("pickle: _rebuild_from_type_v2 without a function and its arguments".into()),
            }
        }
        _ => Ok(Value::Object(Rc::new(RefCell::new(Object { callable: f, args, state: None, items: Vec::new() })))),
    }
}

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    v.items()
        .ok_or_else(|| format!("tensor {what} is not a tuple"))?
        .iter()
        .map(|x| x.as_int().filter(|i| *i >= 0).map(|i| i as usize).ok_or_else(|| format!("tensor {what} holds {x:?}")))
        .collect()
}

fn rebuild_tensor(args: Vec<Value>, dtype: Option<Dtype>) -> Result<Value, String> {
    let [storage, offset, size, stride, ..] = args.as_slice() else {
        return Err("pickle: _rebuild_tensor_v2 with too few arguments".into());
    };
    let Value::Tensor(s) = storage else {
        return Err(format!("pickle: tensor storage is {storage:?}, not a torch storage"));
    };
    Ok(Value::Tensor(TensorRef {
        key: s.key.clone(),
        dtype: dtype.unwrap_or(s.dtype),
        offset: offset.as_int().filter(|o| *o >= 0).ok_or("pickle: bad tensor storage offset")? as usize,
        shape: usizes(size, "size")?,
        stride: usizes(stride, "stride")?,
        numel: s.numel,
    }))
}

/// `('storage', torch.<Type>Storage, key, location, numel)`: a storage, stood in for by a
/// one-dimensional tensor over all of it until `_rebuild_tensor_v2` views it.
fn persistent(pid: Value) -> Result<Value, String> {
    let items = match &pid {
        Value::Tuple(t) => t.clone(),
        _ => return Ok(Value::PersId(Box::new(pid))),
    };
    if items.first().and_then(Value::as_str) != Some("storage") || items.len() < 5 {
        return Ok(Value::PersId(Box::new(pid)));
    }
    let dtype = match &items[1] {
        Value::Global(_, n) => Dtype::from_torch_name(n).ok_or_else(|| format!("unsupported storage type torch.{n}"))?,
        other => return Err(format!("storage type is {other:?}")),
    };
    let key = match &items[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("storage key is {other:?}")),
    };
    let numel = items[4].as_int().filter(|n| *n >= 0).ok_or("bad storage size")? as usize;
    Ok(Value::Tensor(TensorRef { key, dtype, offset: 0, shape: vec![numel], stride: vec![1], numel }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bytes from CPython 3.11: pickle.dumps(obj, protocol=P), obj given beside each.

    #[test]
    fn protocol2_scalars_containers_and_memo() {
        // pickle.dumps({'a': [1, 300, 70000, -2, 2**40], 'b': (1.5, None, True), 'c': 'é'}, 2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01M,\x01Jp\x11\x01\x00J\xfe\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01eX\x01\x00\x00\x00bq\x03G?\xf8\x00\x00\x00\x00\x00\x00N\x88\x87q\x04X\x01\x00\x00\x00cq\x05X\x02\x00\x00\x00\xc3\xa9q\x06u.";
        let v = loads(data).unwrap();
        let a: Vec<i64> = v.get("a").unwrap().items().unwrap().iter().map(|x| x.as_int().unwrap()).collect();
        assert_eq!(a, vec![1, 300, 70000, -2, 1 << 40]);
        let b = v.get("b").unwrap().items().unwrap();
        assert_eq!(b[0].as_f64(), Some(1.5));
        assert!(b[1].is_none());
        assert!(matches!(b[2], Value::Bool(true)));
        assert_eq!(v.get("c").unwrap().as_str(), Some("é"));
    }

    #[test]
    fn protocol4_objects_memoize_and_shared_references() {
        // class P: pass (module m); p = P(); p.x = [1]; pickle.dumps({'p': p, 'q': p.x}, 4)
        let data = b"\x80\x04\x95)\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01p\x94\x8c\x01m\x94\x8c\x01P\x94\x93\x94)\x81\x94}\x94\x8c\x01x\x94]\x94K\x01asb\x8c\x01q\x94h\x08u.";
        let v = loads(data).unwrap();
        let p = v.get("p").unwrap();
        assert_eq!(p.class_name().as_deref(), Some("m.P"));
        let x = p.get("x").unwrap();
        assert_eq!(x.items().unwrap()[0].as_int(), Some(1));
        // 'q' is the memoized list itself, not a copy taken before APPEND ran.
        assert_eq!(v.get("q").unwrap().items().unwrap().len(), 1);
    }

    #[test]
    fn torch_tensor_rebuild_and_ordered_dict() {
        // torch 2.11's data.pkl of torch.save(OrderedDict(w=torch.arange(6.).reshape(2, 3)))
        let data = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08QK\x00K\x02K\x03\x86q\tK\x03K\x01\x86q\n\x89h\x00)Rq\x0btq\x0cRq\rs.";
        let v = loads(data).unwrap();
        match v.get("w").unwrap() {
            Value::Tensor(t) => {
                assert_eq!(t.key, "0");
                assert_eq!(t.dtype, Dtype::F32);
                assert_eq!((t.shape.clone(), t.stride.clone(), t.numel), (vec![2, 3], vec![3, 1], 6));
            }
            other => panic!("not a tensor: {other:?}"),
        }
    }

    #[test]
    fn tensor_subclasses_rebuild_as_plain_tensors() {
        // torch.save({'w': torch.arange(4.).as_subclass(Sub)}) with class Sub(torch.Tensor)
        let data = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._tensor\n_rebuild_from_type_v2\nq\x02(ctorch._utils\n_rebuild_tensor_v2\nq\x03c__main__\nSub\nq\x04((X\x07\x00\x00\x00storageq\x05ctorch\nFloatStorage\nq\x06X\x01\x00\x00\x000q\x07X\x03\x00\x00\x00cpuq\x08K\x04tq\tQK\x00K\x04\x85q\nK\x01\x85q\x0b\x89ccollections\nOrderedDict\nq\x0c)Rq\rtq\x0eNtq\x0fRq\x10s.";
        match loads(data).unwrap().get("w").unwrap() {
            Value::Tensor(t) => assert_eq!((t.shape, t.dtype), (vec![4], Dtype::F32)),
            other => panic!("not a tensor: {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(loads(b"\x80\x02K").unwrap_err().contains("truncated"));
        assert!(loads(b"\x80\x02\xff.").unwrap_err().contains("unsupported opcode 0xff at byte 2"));
        assert!(loads(b"\x80\x02h\x05.").unwrap_err().contains("memo 5"));
    }

    #[test]
    fn nesting_is_limited_before_it_can_overflow_the_stack() {
        // N, then TUPLE1 two million times: a tuple nested 2M deep.
        let mut data = b"\x80\x02N".to_vec();
        data.extend(std::iter::repeat_n(0x85u8, 2_000_000));
        data.push(b'.');
        assert!(loads(&data).unwrap_err().contains("nest deeper than 1000 levels"));
        // Lists appended into each other through the memo: [[[...]]] 2M deep.
        let mut data = b"\x80\x02]q\x00".to_vec();
        for _ in 0..2_000_000 {
            data.extend_from_slice(b"]h\x00aq\x00"); // a new list, the previous one appended, memoized
        }
        data.push(b'.');
        assert!(loads(&data).unwrap_err().contains("nest deeper than 1000 levels"));
        // A list that deepens after it was put inside a tuple is refused (the tuple's depth would be stale).
        let data = b"\x80\x02]q\x00h\x00\x85q\x01h\x00N\x85a.";
        assert!(loads(data).unwrap_err().contains("grows deeper after it was put inside"));
        // MAX_DEPTH levels are fine.
        let mut data = b"\x80\x02N".to_vec();
        data.extend(std::iter::repeat_n(0x85u8, MAX_DEPTH as usize - 1));
        data.push(b'.');
        assert!(loads(&data).is_ok());
    }
}
