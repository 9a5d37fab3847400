/* version.h -- the one version string every ddm binary reports. */
#ifndef DDM_VERSION_H
#define DDM_VERSION_H
#define DDM_VERSION "0.1.0"
#endif
