// The functions are static inline in include/CHeapTrim.h; SwiftPM needs one source file per C target.
#include "CHeapTrim.h"
