package xenabi

// cgo -godefs names anonymous structs _Ctype_struct___N and emits no
// definition for them; defs.go names the same C types through typedefs,
// so the generated fields resolve here: hvm_hw_hpet's timers (___0) and
// vcpu_guest_context.fpu_ctxt (___2). If regenerating against other
// headers renumbers them, the build fails on these lines (or the layout
// tests do) rather than silently changing a layout.
type (
	_Ctype_struct___0 = HVMHWHPETTimer
	_Ctype_struct___2 = FPUCtxt
)
