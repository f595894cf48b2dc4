// The functions are static inline in include/CProcessHardening.h; SwiftPM needs one source file per C target.
#include "CProcessHardening.h"
