/* Region-of-interest JPEG decoding with libjpeg(-turbo), for jpeg_roi.py.
 *
 * A training crop covers on average about half of the image. Decoding the whole image and
 * throwing most of it away is the largest single cost of the CPU input pipeline, so this
 * decodes only what the crop needs:
 *   - rows above the crop are skipped (jpeg_skip_scanlines: entropy decoding only, no
 *     inverse DCT, upsampling or colour conversion);
 *   - columns outside the crop are skipped (jpeg_crop_scanline, aligned by libjpeg to the
 *     iMCU grid; the extra columns it keeps are dropped when copying out);
 *   - rows below the crop are never read at all.
 * Optionally the image is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain, which the
 * caller asks for only when plenty of resolution remains.
 *
 * Plain C with no Python API, loaded with ctypes; built on first use by jpeg_roi.py.
 */

#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#define ROI_OK 0
#define ROI_ERROR 1       /* libjpeg failed: the message is in errbuf */
#define ROI_UNSUPPORTED 2 /* not a colour or grayscale JPEG, or a bad region: decode in full */
#define ROI_WARNING 3     /* libjpeg warned (corrupt data): decode in full for the verdict */

/* Chroma is upsampled from at most 4 pixels away (h4 sampling): 16 is ample. */
#define ROI_MARGIN 16

struct roi_error_mgr {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
};

static void roi_error_exit(j_common_ptr cinfo) {
    struct roi_error_mgr *err = (struct roi_error_mgr *)cinfo->err;
    longjmp(err->escape, 1);
}

static void roi_emit_message(j_common_ptr cinfo, int msg_level) {
    /* Level -1 is a warning about corrupt data; count it, print nothing. Trace messages
     * (levels >= 0) are ignored. */
    if (msg_level < 0)
        cinfo->err->num_warnings++;
}

/* Decode rows [y, y + h) and columns [x, x + w) of the image scaled by 1/scale_denom
 * (coordinates in scaled pixels) into out, h rows of w RGB pixels, tightly packed.
 * The scaled size is ceil(W / scale_denom) x ceil(H / scale_denom), as libjpeg computes it.
 */
int roi_decode(const unsigned char *data, unsigned long size, int scale_denom, int x, int y, int w,
               int h, unsigned char *out, char *errbuf, int errbuf_len) {
    struct jpeg_decompress_struct cinfo;
    struct roi_error_mgr err;
    unsigned char *volatile row = NULL;
    volatile int status = ROI_OK;

    if (errbuf_len > 0)
        errbuf[0] = '\0';
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = roi_error_exit;
    err.pub.emit_message = roi_emit_message;
    if (setjmp(err.escape)) {
        if (errbuf_len > 0) {
            char message[JMSG_LENGTH_MAX];
            (*cinfo.err->format_message)((j_common_ptr)&cinfo, message);
            strncpy(errbuf, message, (size_t)errbuf_len - 1);
            errbuf[errbuf_len - 1] = '\0';
        }
        jpeg_destroy_decompress(&cinfo);
        free(row);
        return ROI_ERROR;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, size);
    jpeg_read_header(&cinfo, TRUE);
    /* Colour and grayscale JPEGs (gray is expanded to RGB, as PIL's convert("RGB") does);
     * CMYK/YCCK and anything else stay with PIL, which knows their colour conventions. */
    if (!(cinfo.num_components == 3 &&
          (cinfo.jpeg_color_space == JCS_YCbCr || cinfo.jpeg_color_space == JCS_RGB)) &&
        !(cinfo.num_components == 1 && cinfo.jpeg_color_space == JCS_GRAYSCALE)) {
        jpeg_destroy_decompress(&cinfo);
        return ROI_UNSUPPORTED;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)scale_denom;
    jpeg_start_decompress(&cinfo);
    if (x < 0 || y < 0 || w <= 0 || h <= 0 || (JDIMENSION)(x + w) > cinfo.output_width ||
        (JDIMENSION)(y + h) > cinfo.output_height || cinfo.output_components != 3) {
        jpeg_destroy_decompress(&cinfo);
        return ROI_UNSUPPORTED;
    }
    {
        /* A few columns either side of the crop, so that chroma upsampling at its edges
         * sees the real neighbours instead of treating the crop's edge as the image's
         * (otherwise the first or last column can differ from a full decode's). */
        int left = x > ROI_MARGIN ? x - ROI_MARGIN : 0;
        JDIMENSION xoffset = (JDIMENSION)left, width = (JDIMENSION)(x - left + w + ROI_MARGIN);
        size_t skip_bytes, row_bytes = (size_t)w * 3;
        int r;

        if (xoffset + width > cinfo.output_width)
            width = cinfo.output_width - xoffset;
        /* libjpeg widens the region to whole iMCU columns: xoffset moves left, width grows. */
        jpeg_crop_scanline(&cinfo, &xoffset, &width);
        skip_bytes = (size_t)(x - (int)xoffset) * 3;
        row = (unsigned char *)malloc((size_t)cinfo.output_width * 3);
        if (row == NULL) {
            jpeg_destroy_decompress(&cinfo);
            return ROI_UNSUPPORTED;
        }
        if (y > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)y) != (JDIMENSION)y) {
            status = ROI_UNSUPPORTED;
        }
        for (r = 0; status == ROI_OK && r < h; r++) {
            JSAMPROW rows[1];
            rows[0] = row;
            if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
                status = ROI_UNSUPPORTED;
                break;
            }
            memcpy(out + (size_t)r * row_bytes, row + skip_bytes, row_bytes);
        }
    }
    if (status == ROI_OK && cinfo.err->num_warnings > 0)
        status = ROI_WARNING;
    /* The rows below the crop are not needed: stop here instead of finishing the scan. */
    jpeg_destroy_decompress(&cinfo);
    free(row);
    return status;
}
