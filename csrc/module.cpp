// `coalm_kernels._C`: an empty Python module whose import loads this library, so that its TORCH_LIBRARY blocks register
// the coalm:: ops with torch (coalm_kernels/native.py imports it). A Python module, not a bare .so, so that the import
// system finds it wherever the install put it (an editable install keeps it outside the source tree).
#include <Python.h>

static PyModuleDef coalm_native_module = {PyModuleDef_HEAD_INIT, "_C", "coalm native CPU ops (torch.ops.coalm)", -1,
                                          nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&coalm_native_module); }
