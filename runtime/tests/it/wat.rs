//! Hand-written WAT components implementing the `squid-mesh:step` action world, for guests
//! that misbehave in ways a real toolchain would not produce on purpose.
//!
//! Memory map of the core module: 512 = return area of `run` (64 bytes), 1024 = the static
//! `describe` record, 2048 = strings, 3072 = canned outputs, 4096.. = bump heap.

/// A `run` body (core instructions) for one behaviour; it must leave the address of the
/// return area on the stack. Params: 0-10 the flattened step context, 11/12 the input.
pub fn action(run_body: &str) -> String {
    action_with(run_body, "")
}

/// Like [`action`], with extra core-module functions.
pub fn action_with(run_body: &str, extra_funcs: &str) -> String {
    format!(
        r#"(component
  (import "squid-mesh:step/types@0.2.0" (instance $types
    (type $ctx' (record (field "run-id" string) (field "workflow" string) (field "step" string)
                        (field "attempt" u32) (field "runnable-key" string) (field "idempotency-key" string)
                        (field "step-idempotency-key" string)))
    (export "step-context" (type (eq $ctx')))
    (type $ok' (record (field "output" string) (field "continue-after-ms" (option u64))))
    (export "step-success" (type (eq $ok')))
    (type $err' (record (field "code" string) (field "message" string) (field "retryable" bool)
                        (field "retry-after-ms" (option u64)) (field "details" (option string))))
    (export "step-error" (type (eq $err')))
    (type $desc' (record (field "name" string) (field "version" string) (field "summary" string)
                         (field "input-schema" (option string)) (field "output-schema" (option string))))
    (export "action-description" (type (eq $desc')))
  ))
  (alias export $types "step-context" (type $ctx))
  (alias export $types "step-success" (type $ok))
  (alias export $types "step-error" (type $err))
  (alias export $types "action-description" (type $desc))
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 4096))
    (data (i32.const 1024) "\00\08\00\00\03\00\00\00\08\08\00\00\05\00\00\00\00\08\00\00\00\00\00\00")
    (data (i32.const 2048) "wat")
    (data (i32.const 2056) "0.0.0")
    (data (i32.const 3072) "[1,2]")
    (data (i32.const 3080) "{{nope")
    (data (i32.const 3088) "boom")
    (data (i32.const 3096) "it went boom")
    (func $realloc (export "realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
      (local $ret i32)
      (local.set $ret (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                               (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $ret) (local.get $new_size)))
      (block $done (loop $grow
        (br_if $done (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
      (if (local.get $old) (then (memory.copy (local.get $ret) (local.get $old) (local.get $old_size))))
      (local.get $ret))
    ;; success with output = the bytes at (ptr, len)
    (func $ok (param $ptr i32) (param $len i32) (result i32)
      (i32.store8 (i32.const 512) (i32.const 0))
      (i32.store (i32.const 520) (local.get $ptr))
      (i32.store (i32.const 524) (local.get $len))
      (i32.store8 (i32.const 528) (i32.const 0))
      (i32.const 512))
    {extra_funcs}
    (func (export "run") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      {run_body})
    (func (export "describe") (result i32) (i32.const 1024)))
  (core instance $i (instantiate $m))
  (func (export "run") (param "ctx" $ctx) (param "input" string) (result (result $ok (error $err)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "describe") (result $desc)
    (canon lift (core func $i "describe") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))"#
    )
}

/// Echoes its input as its output.
pub fn echo() -> String {
    action("(call $ok (local.get 13) (local.get 14))")
}

/// Spins forever.
pub fn infinite_loop() -> String {
    action("(loop $l (br $l)) (unreachable)")
}

/// Grows memory until refused, then traps like a guest allocator would.
pub fn memory_bomb() -> String {
    action(
        "(loop $l
           (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
           (br $l))
         (unreachable)",
    )
}

/// Recurses without end.
pub fn deep_recursion() -> String {
    action_with(
        "(call $recurse (i32.const 0)) (unreachable)",
        "(func $recurse (param i32) (result i32)
           (i32.add (call $recurse (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))",
    )
}

/// Executes `unreachable`.
pub fn trap() -> String {
    action("(unreachable)")
}

/// Returns `len` bytes of output (spaces: valid UTF-8, invalid JSON).
pub fn oversized_output(len: u32) -> String {
    action(&format!(
        "(drop (memory.grow (i32.const {pages})))
         (memory.fill (i32.const 65536) (i32.const 32) (i32.const {len}))
         (call $ok (i32.const 65536) (i32.const {len}))",
        pages = len / 65536 + 2
    ))
}

/// Returns the JSON array `[1,2]` as output.
pub fn array_output() -> String {
    action("(call $ok (i32.const 3072) (i32.const 5))")
}

/// Returns `{nope` as output.
pub fn broken_json_output() -> String {
    action("(call $ok (i32.const 3080) (i32.const 5))")
}

/// Fails with a retryable step error `boom` asking for a retry after 250 ms.
pub fn step_error() -> String {
    action(
        "(i32.store8 (i32.const 512) (i32.const 1))
         (i32.store (i32.const 520) (i32.const 3088))
         (i32.store (i32.const 524) (i32.const 4))
         (i32.store (i32.const 528) (i32.const 3096))
         (i32.store (i32.const 532) (i32.const 12))
         (i32.store8 (i32.const 536) (i32.const 1))
         (i32.store8 (i32.const 544) (i32.const 1))
         (i64.store (i32.const 552) (i64.const 250))
         (i32.store8 (i32.const 560) (i32.const 0))
         (i32.const 512)",
    )
}

/// A component that exports `run` with the wrong signature.
pub fn wrong_export() -> String {
    r#"(component
  (core module $m
    (memory (export "memory") 1)
    (func (export "run") (result i32) (i32.const 7)))
  (core instance $i (instantiate $m))
  (func (export "run") (result u32) (canon lift (core func $i "run"))))"#
        .to_owned()
}
