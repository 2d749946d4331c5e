package xenabi

// cgo -godefs names the anonymous struct of vcpu_guest_context.fpu_ctxt
// _Ctype_struct___1 and emits no definition for it; defs.go names the same
// C type FPUCtxt (through a typedef), so the generated field resolves here.
// If regenerating against other headers renumbers the anonymous struct, the
// build fails on this line rather than silently changing a layout.
type _Ctype_struct___1 = FPUCtxt
